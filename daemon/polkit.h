/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Asynchronous authorization with polkit's CheckAuthorization, modelled on systemd's
 * bus_verify_polkit_async(): a method handler calls polkit_verify_async() with the checks it needs.
 * It returns 1 (allowed: go on), 0 (asked polkit: return 1 from the handler without replying; when
 * polkit answers, the message is dispatched again and the handler runs from the top, so it must not
 * change anything before this call) or a negative errno with AccessDenied set.
 *
 * uid 0 is always allowed without asking. The subject is the caller's unique bus name
 * ("system-bus-name"), never a pid (CVE-2013-4288). If polkit cannot be reached, everybody else is
 * refused: fail closed. */

#include <sys/types.h>
#include <systemd/sd-bus.h>

#include "broker.h"

#define POLKIT_ACTION_ATTACH_GROUP "org.vfiobroker.broker1.attach-group"
#define POLKIT_ACTION_MANAGE       "org.vfiobroker.broker1.manage"

typedef struct PolkitCheck {
        const char *action;
        const char * const *details; /* key, value, key, value, ..., NULL; may be NULL */
} PolkitCheck;

int polkit_verify_async(Broker *b, sd_bus_message *m, const PolkitCheck *checks, size_t n_checks,
                        sd_bus_error *error);

void polkit_queries_free(Broker *b);

/* The sender's effective uid, from the bus (never augmented from /proc, which a caller could race). */
int bus_message_get_sender_uid(sd_bus_message *m, uid_t *ret);
