/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Asynchronous authorization with polkit's CheckAuthorization, modelled on systemd's
 * bus_verify_polkit_async(): a method handler asks polkit_check_async() for the checks it needs (through
 * caller.h, which decides who needs asking at all). It returns 1 (allowed: go on), 0 (asked polkit:
 * return 1 from the handler without replying; when polkit answers, the message is dispatched again and
 * the handler runs from the top, so it must not change anything before this call) or a negative errno
 * with AccessDenied set.
 *
 * Queries live in a registry keyed by the method call they authorize, as in systemd's bus-polkit.c; an
 * answer that no handler comes back for (its object was closed meanwhile) is dropped once the bus has
 * nothing more to dispatch. Each caller may have a bounded number of calls waiting for polkit: beyond
 * it a call is refused at once, so one user's flood never delays another's authorization.
 *
 * The subject is the caller's unique bus name ("system-bus-name"), never a pid (CVE-2013-4288). If
 * polkit cannot be reached, the caller is refused: fail closed. */

#include <stddef.h>
#include <sys/types.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "broker-wire.h"
#include "macro.h"

typedef struct PolkitCheck {
        const char *action;
        const char * const *details; /* key, value, key, value, ..., NULL; may be NULL */
} PolkitCheck;

typedef struct PolkitRegistry PolkitRegistry;

/* Method calls of one caller that may wait for polkit at the same time. */
#define POLKIT_PENDING_PER_CALLER_MAX 16

/* bus: where polkit is asked (the system bus, also for calls that came on a peer connection). */
int polkit_registry_new(sd_bus *bus, sd_event *event, PolkitRegistry **ret);
PolkitRegistry *polkit_registry_free(PolkitRegistry *r);
DEFINE_TRIVIAL_CLEANUP_FUNC(PolkitRegistry *, polkit_registry_free);

/* subject: the caller's unique name on the bus; uid: its uid, for the journal when it is denied. */
int polkit_check_async(PolkitRegistry *reg, sd_bus_message *m, const char *subject, uid_t uid,
                       const PolkitCheck *checks, size_t n_checks, sd_bus_error *error);

/* The caller needs no asking (root): forget what was asked for m. */
void polkit_forget(PolkitRegistry *reg, sd_bus_message *m);
