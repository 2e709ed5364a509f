/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <syslog.h>
#include <systemd/sd-journal.h>

#include "log.h"
#include "message-ids.h"

/* Process-wide by nature, like systemd's log level; set once from main(). */
static int log_max_level = 6; /* LOG_INFO */

void log_set_max_level(int level) {
        log_max_level = level;
}

/* Whether stderr is connected to journald, as sd-daemon(3) defines it: $JOURNAL_STREAM names the
 * device and inode of the stream. An inherited variable with stderr redirected elsewhere does not count. */
static bool stderr_is_journal(void) {
        static int cached = -1;

        if (cached < 0) {
                const char *e = getenv("JOURNAL_STREAM");
                unsigned long long dev, ino;
                struct stat st;

                cached = e && sscanf(e, "%llu:%llu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
                         (unsigned long long) st.st_dev == dev && (unsigned long long) st.st_ino == ino;
        }
        return cached;
}

int log_internal(const char *prefix, int error, const char *format, ...) {
        int saved = errno;
        va_list ap;

        /* prefix is "<N>"; the level is the digit. */
        if (prefix[1] - '0' <= log_max_level) {
                char buf[1024];

                /* %m in the format means the error given, as in systemd. */
                errno = error < 0 ? -error : error;
                va_start(ap, format);
                (void) vsnprintf(buf, sizeof(buf), format, ap);
                va_end(ap);
                /* Priority prefixes only where journald parses them. */
                fprintf(stderr, "%s%s\n", getenv("JOURNAL_STREAM") ? prefix : "", buf);
        }

        errno = saved;
        return error < 0 ? error : -abs(error);
}

#define EVENT_FIELDS_MAX 16

void log_event(const LogEvent *event, const char *format, ...) {
        char *fields[EVENT_FIELDS_MAX] = {};
        struct iovec iov[EVENT_FIELDS_MAX];
        int priority = event->priority ?: LOG_INFO;
        size_t n = 0;
        char *message = NULL;
        int saved = errno, r = -1;
        va_list ap;

        if (priority > log_max_level)
                return;

        va_start(ap, format);
        r = vasprintf(&message, format, ap);
        va_end(ap);
        if (r < 0) {
                errno = saved;
                return;
        }

        /* Each asprintf may fail alone (ENOMEM); a missing field is better than a missing event. */
#define FIELD(...) do { if (asprintf(&fields[n], __VA_ARGS__) >= 0) n++; } while (0)
        FIELD("MESSAGE=%s", message);
        FIELD("MESSAGE_ID=%s", event->message_id);
        FIELD("PRIORITY=%d", priority);
        FIELD("SYSLOG_IDENTIFIER=%s", program_invocation_short_name);
        if (event->container > 0)
                FIELD("CONTAINER_ID=%" PRIu64, event->container);
        if (event->label)
                FIELD("CONTAINER_LABEL=%s", event->label);
        if (event->owner)
                FIELD("OWNER=%s", event->owner);
        if (event->uid)
                FIELD("USER_ID=%u", (unsigned) *event->uid);
        if (event->group)
                FIELD("VFIO_GROUP=%u", *event->group);
        if (event->device)
                FIELD("DEVICE=%s", event->device);
        if (event->action)
                FIELD("POLKIT_ACTION=%s", event->action);
        if (event->reason)
                FIELD("REASON=%s", event->reason);
        if (event->count)
                FIELD("COUNT=%" PRIu64, *event->count);
#undef FIELD

        r = -1;
        if (stderr_is_journal()) {
                for (size_t i = 0; i < n; i++)
                        iov[i] = (struct iovec) { fields[i], strlen(fields[i]) };
                r = sd_journal_sendv(iov, (int) n);
        }
        if (r < 0) {
                /* Not under journald, or it refused: one line, the fields after the message (skipping
                 * MESSAGE, PRIORITY and SYSLOG_IDENTIFIER, which the line itself carries). */
                if (getenv("JOURNAL_STREAM"))
                        fprintf(stderr, "<%d>", priority);
                fprintf(stderr, "%s [", message);
                for (size_t i = 1; i < n; i++)
                        if (i != 2 && i != 3)
                                fprintf(stderr, "%s%s", i == 1 ? "" : " ", fields[i]);
                fputs("]\n", stderr);
        }

        for (size_t i = 0; i < n; i++)
                free(fields[i]);
        free(message);
        errno = saved;
}

void log_event_denied(const char *action, uid_t uid, const char * const *details, const char *reason) {
        const char *group_text = NULL, *devices = NULL;
        unsigned group;
        bool has_group;

        for (const char * const *d = details; d && d[0] && d[1]; d += 2) {
                if (strcmp(d[0], "group") == 0)
                        group_text = d[1];
                else if (strcmp(d[0], "devices") == 0)
                        devices = d[1];
        }
        has_group = group_text && sscanf(group_text, "%u", &group) == 1;

        log_event(&(LogEvent) { LOG_MESSAGE_AUTHORIZATION_DENIED, .priority = LOG_NOTICE, .uid = &uid,
                                .group = has_group ? &group : NULL, .device = devices, .action = action,
                                .reason = reason },
                  "Denied %s to uid %u%s%s%s%s: %s", action, (unsigned) uid,
                  has_group ? " for VFIO group " : "", has_group ? group_text : "",
                  devices ? ", devices " : "", devices ?: "", reason ?: "not authorized");
}
