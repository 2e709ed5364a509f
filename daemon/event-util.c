/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <time.h>

#include "event-util.h"

int event_arm_oneshot(sd_event *event, sd_event_source **s, uint64_t usec, sd_event_time_handler_t handler,
                      void *userdata) {
        int r;

        if (!*s)
                return sd_event_add_time(event, s, CLOCK_MONOTONIC, usec, 0, handler, userdata);
        r = sd_event_source_set_time(*s, usec);
        if (r < 0)
                return r;
        return sd_event_source_set_enabled(*s, SD_EVENT_ONESHOT);
}

int event_arm_oneshot_relative(sd_event *event, sd_event_source **s, uint64_t usec,
                               sd_event_time_handler_t handler, void *userdata) {
        uint64_t now;
        int r;

        r = sd_event_now(event, CLOCK_MONOTONIC, &now);
        if (r < 0)
                return r;
        return event_arm_oneshot(event, s, now + usec, handler, userdata);
}

int event_is_armed(sd_event_source *s) {
        int enabled = SD_EVENT_OFF;

        return s && sd_event_source_get_enabled(s, &enabled) >= 0 && enabled != SD_EVENT_OFF;
}
