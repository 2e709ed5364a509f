/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* One-shot CLOCK_MONOTONIC timers that are armed again and again (a linger, a throttle): the source is
 * made on first use and kept, disabled, in between. */

#include <stdint.h>
#include <systemd/sd-event.h>

/* Arms *s (creating it on event with handler and userdata if NULL) to fire once at usec, CLOCK_MONOTONIC;
 * if it is armed already, moves it. Returns 0 or negative errno. */
int event_arm_oneshot(sd_event *event, sd_event_source **s, uint64_t usec, sd_event_time_handler_t handler,
                      void *userdata);

/* The same, usec from now. */
int event_arm_oneshot_relative(sd_event *event, sd_event_source **s, uint64_t usec,
                               sd_event_time_handler_t handler, void *userdata);

/* Whether *s is armed. */
int event_is_armed(sd_event_source *s);
