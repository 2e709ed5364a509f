/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Logging to stderr with sd-daemon priority prefixes, so journald files each line at the right level.
 * log_*_errno() return the (negative) error they were given, for "return log_error_errno(r, ...)". */

#include <errno.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
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

/* Structured events for the journal: a MESSAGE_ID from message-ids.h and the fields that identify what
 * the event is about, so that `journalctl MESSAGE_ID=... USER_ID=1000` finds it. Unset fields (NULL) are
 * left out. Under journald (stderr is $JOURNAL_STREAM) the event goes through sd_journal_send(); elsewhere,
 * or when the journal refuses it, it is one stderr line with the fields appended, e.g.
 *   log_event(&(LogEvent) { LOG_MESSAGE_GROUP_ATTACHED, .container = c->id, .uid = &c->uid,
 *                           .group = &id }, "Attached VFIO group %u.", id);  */
typedef struct LogEvent {
        const char *message_id;  /* LOG_MESSAGE_* */
        int priority;            /* LOG_* of syslog.h; 0 (LOG_EMERG, never an event's) means LOG_INFO */
        uint64_t container;      /* CONTAINER_ID, 0 = none (ids start at 1) */
        const char *label;       /* CONTAINER_LABEL */
        const char *owner;       /* OWNER: the owner's unique bus name */
        const uid_t *uid;        /* USER_ID: the container owner's or caller's uid */
        const unsigned *group;   /* VFIO_GROUP: IOMMU group number */
        const char *device;      /* DEVICE: PCI name, or a comma-separated list */
        const char *action;      /* POLKIT_ACTION */
        const char *reason;      /* REASON: why, in words */
        const uint64_t *count;   /* COUNT: e.g. containers restored */
} LogEvent;

void log_event(const LogEvent *event, const char *format, ...) _printf_(2, 3);

/* Authorization denied, with the group and devices from polkit's details ("group", "devices" pairs). */
void log_event_denied(const char *action, uid_t uid, const char * const *details, const char *reason);
