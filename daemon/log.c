/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <stdarg.h>
#include <stdlib.h>

#include "log.h"

/* Process-wide by nature, like systemd's log level; set once from main(). */
static int log_max_level = 6; /* LOG_INFO */

void log_set_max_level(int level) {
        log_max_level = level;
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
