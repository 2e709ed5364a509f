/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Logging to stderr with sd-daemon priority prefixes, so journald files each line at the right level.
 * log_*_errno() return the (negative) error they were given, for "return log_error_errno(r, ...)". */

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#include "macro.h"

int log_internal(const char *prefix, int error, const char *format, ...) _printf_(3, 4);

#define log_debug(...)   log_internal(SD_DEBUG, 0, __VA_ARGS__)
#define log_info(...)    log_internal(SD_INFO, 0, __VA_ARGS__)
#define log_notice(...)  log_internal(SD_NOTICE, 0, __VA_ARGS__)
#define log_warning(...) log_internal(SD_WARNING, 0, __VA_ARGS__)
#define log_error(...)   log_internal(SD_ERR, 0, __VA_ARGS__)
#define log_debug_errno(e, ...)   log_internal(SD_DEBUG, (e), __VA_ARGS__)
#define log_warning_errno(e, ...) log_internal(SD_WARNING, (e), __VA_ARGS__)
#define log_error_errno(e, ...)   log_internal(SD_ERR, (e), __VA_ARGS__)
#define log_oom() log_internal(SD_ERR, -ENOMEM, "Out of memory.")

void log_set_max_level(int level);
