/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <stdio.h>
#include <string.h>

#include "caller.h"
#include "peer.h"

int caller_bus_sender_uid(sd_bus_message *m, uid_t *ret) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *creds = NULL;
        uid_t uid;
        int r;

        r = sd_bus_query_sender_creds(m, SD_BUS_CREDS_EUID, &creds);
        if (r < 0)
                return r;
        /* Credentials read from /proc after the fact could belong to another process by now. */
        if (sd_bus_creds_get_augmented_mask(creds) & SD_BUS_CREDS_EUID)
                return -EPERM;
        r = sd_bus_creds_get_euid(creds, &uid);
        if (r < 0)
                return r;
        *ret = uid;
        return 0;
}

const char *caller_name(Broker *b, sd_bus_message *m) {
        const char *owner;

        if (peer_identity(b, sd_bus_message_get_bus(m), &owner, NULL) > 0)
                return owner;
        return sd_bus_message_get_sender(m);
}

int caller_uid(Broker *b, sd_bus_message *m, uid_t *ret) {
        if (peer_identity(b, sd_bus_message_get_bus(m), NULL, ret) > 0)
                return 0;
        return caller_bus_sender_uid(m, ret);
}

size_t caller_checks_needed(const char *caller, uid_t caller_uid, const char *owner, const PolkitCheck *manage,
                            const PolkitCheck *extra, PolkitCheck ret[static 2]) {
        size_t n = 0;

        if (caller_uid == 0)
                return 0;
        if (!caller || !owner || strcmp(caller, owner) != 0)
                ret[n++] = *manage;
        if (extra)
                ret[n++] = *extra;
        return n;
}

int caller_verify_owner(Broker *b, sd_bus_message *m, const char *path, const char *owner, uid_t owner_uid,
                        const PolkitCheck *extra, sd_bus_error *error) {
        PolkitCheck checks[2];
        char uid_text[32];
        const char *manage_details[] = { "container", path, "owner_uid", uid_text, NULL };
        const PolkitCheck manage = { POLKIT_ACTION_MANAGE, manage_details };
        const char *name = caller_name(b, m);
        size_t n;
        uid_t uid;
        int r;

        (void) snprintf(uid_text, sizeof(uid_text), "%u", owner_uid);

        /* The owner's uid is the container's: it was its connection's when the container was made, and a
         * unique name is never reused on a bus. Asking again would be a synchronous call to dbus-daemon
         * (messages there carry no credentials) on every Map and Unmap. */
        if (name && owner && strcmp(name, owner) == 0)
                uid = owner_uid;
        else {
                r = caller_uid(b, m, &uid);
                if (r < 0)
                        return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED,
                                                "Cannot tell the caller's uid; refusing.");
        }
        n = caller_checks_needed(name, uid, owner, &manage, extra, checks);
        if (n == 0) {
                polkit_forget(b->polkit, m);
                return 1;
        }
        /* Asked about as their bus name (on a peer connection: the bus name that opened it, still on the
         * bus for polkit to check). */
        return polkit_check_async(b->polkit, m, name, uid, checks, n, error);
}
