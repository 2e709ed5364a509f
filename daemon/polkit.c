/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "peer.h"
#include "polkit.h"

/* One CheckAuthorization call for one (message, action). Kept until the handler that asked consumes
 * the answer on its next run; answers nobody came back for are dropped after a while (the caller may
 * have gone, or the object it named may have been closed meanwhile). */
struct PolkitQuery {
        PolkitQuery *next;
        Broker *broker;
        sd_bus_message *message; /* the method call being authorized */
        char *action;
        sd_bus_slot *slot;       /* the call to polkit, while in flight */
        bool answered;
        bool allowed;
        char *denial;            /* why not, for the AccessDenied message */
        uint64_t answered_usec;
};

#define POLKIT_STALE_USEC (60ULL * 1000000ULL)

static uint64_t now_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000;
}

static PolkitQuery *polkit_query_free(PolkitQuery *q) {
        if (!q)
                return NULL;
        sd_bus_slot_unref(q->slot);
        sd_bus_message_unref(q->message);
        free(q->action);
        free(q->denial);
        free(q);
        return NULL;
}

void polkit_queries_free(Broker *b) {
        while (b->polkit_queries) {
                PolkitQuery *q = b->polkit_queries;
                b->polkit_queries = q->next;
                polkit_query_free(q);
        }
}

static void polkit_queries_gc(Broker *b) {
        uint64_t now = now_usec();

        for (PolkitQuery **p = &b->polkit_queries; *p;) {
                PolkitQuery *q = *p;
                if (q->answered && now - q->answered_usec > POLKIT_STALE_USEC) {
                        *p = q->next;
                        polkit_query_free(q);
                } else
                        p = &q->next;
        }
}

static PolkitQuery *polkit_query_find(Broker *b, sd_bus_message *m, const char *action) {
        for (PolkitQuery *q = b->polkit_queries; q; q = q->next)
                if (q->message == m && strcmp(q->action, action) == 0)
                        return q;
        return NULL;
}

static void polkit_queries_drop_message(Broker *b, sd_bus_message *m) {
        for (PolkitQuery **p = &b->polkit_queries; *p;) {
                PolkitQuery *q = *p;
                if (q->message == m) {
                        *p = q->next;
                        polkit_query_free(q);
                } else
                        p = &q->next;
        }
}

int bus_message_get_sender_uid(sd_bus_message *m, uid_t *ret) {
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

static int polkit_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        PolkitQuery *q = userdata;
        const sd_bus_error *e;
        int authorized = 0, challenge = 0, r;

        q->slot = sd_bus_slot_unref(q->slot);
        q->answered = true;
        q->answered_usec = now_usec();
        q->allowed = false;

        e = sd_bus_message_get_error(reply);
        if (e) {
                log_warning("polkit could not decide %s: %s", q->action, e->message ?: e->name);
                (void) asprintf(&q->denial, "polkit is not available (%s), and only root may %s without it.",
                                e->name, strcmp(q->action, POLKIT_ACTION_MANAGE) == 0 ?
                                "act on another connection's container" : "attach VFIO groups");
        } else {
                r = sd_bus_message_enter_container(reply, 'r', "bba{ss}");
                if (r >= 0)
                        r = sd_bus_message_read(reply, "bb", &authorized, &challenge);
                if (r < 0) {
                        log_warning_errno(r, "Malformed answer from polkit: %m");
                        (void) asprintf(&q->denial, "polkit gave a malformed answer.");
                } else if (authorized)
                        q->allowed = true;
                else
                        (void) asprintf(&q->denial, "Not authorized by polkit for %s%s.", q->action,
                                        challenge ? " (interactive authentication would be needed: call "
                                                    "with interactive authorization allowed)" : "");
        }

        /* Run the handler again from the top; it finds the answer with polkit_query_find(). */
        r = sd_bus_enqueue_for_read(sd_bus_message_get_bus(q->message), q->message);
        if (r < 0)
                log_error_errno(r, "Failed to re-queue a method call after polkit's answer: %m");
        return 0;
}

static int polkit_query_start(Broker *b, sd_bus_message *m, const PolkitCheck *check) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *call = NULL;
        PolkitQuery *q;
        const char *sender;
        int r;

        /* On a peer connection: the bus name that opened it, still on the bus for polkit to check. */
        sender = broker_caller_name(b, m);
        if (!sender || !b->bus)
                return -EPERM;

        r = sd_bus_message_new_method_call(b->bus, &call, "org.freedesktop.PolicyKit1",
                                           "/org/freedesktop/PolicyKit1/Authority",
                                           "org.freedesktop.PolicyKit1.Authority", "CheckAuthorization");
        if (r < 0)
                return r;

        r = sd_bus_message_append(call, "(sa{sv})s", "system-bus-name", 1, "name", "s", sender, check->action);
        if (r < 0)
                return r;

        r = sd_bus_message_open_container(call, 'a', "{ss}");
        if (r < 0)
                return r;
        for (const char * const *d = check->details; d && d[0] && d[1]; d += 2) {
                r = sd_bus_message_append(call, "{ss}", d[0], d[1]);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(call);
        if (r < 0)
                return r;

        /* Flag 1 = AllowUserInteraction, only when the caller asked for it. */
        r = sd_bus_message_append(call, "us",
                                  (uint32_t) !!sd_bus_message_get_allow_interactive_authorization(m), "");
        if (r < 0)
                return r;

        q = calloc(1, sizeof(*q));
        if (!q)
                return -ENOMEM;
        q->broker = b;
        q->message = sd_bus_message_ref(m);
        q->action = strdup(check->action);
        if (!q->action) {
                polkit_query_free(q);
                return -ENOMEM;
        }

        /* An interactive authentication can take a person a while. */
        r = sd_bus_call_async(b->bus, &q->slot, call, polkit_reply, q,
                              sd_bus_message_get_allow_interactive_authorization(m) ? 300ULL * 1000000ULL : 0);
        if (r < 0) {
                polkit_query_free(q);
                return r;
        }

        q->next = b->polkit_queries;
        b->polkit_queries = q;
        return 0;
}

int polkit_verify_async(Broker *b, sd_bus_message *m, const PolkitCheck *checks, size_t n_checks,
                        sd_bus_error *error) {
        uid_t uid;
        int r;

        assert(b);
        assert(m);

        r = broker_caller_uid(b, m, &uid);
        if (r < 0)
                return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED,
                                        "Cannot tell the caller's uid; refusing.");
        if (uid == 0) {
                polkit_queries_drop_message(b, m);
                return 1;
        }

        polkit_queries_gc(b);

        for (size_t i = 0; i < n_checks; i++) {
                PolkitQuery *q = polkit_query_find(b, m, checks[i].action);

                if (!q) {
                        r = polkit_query_start(b, m, &checks[i]);
                        if (r < 0) {
                                polkit_queries_drop_message(b, m);
                                log_warning_errno(r, "Failed to ask polkit: %m");
                                return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                                         "Cannot ask polkit for %s; refusing.", checks[i].action);
                        }
                        return 0;
                }
                if (!q->answered)
                        return 0;
                if (!q->allowed) {
                        log_event_denied(checks[i].action, uid, checks[i].details, q->denial);
                        r = sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED, "%s",
                                              q->denial ?: "Not authorized.");
                        polkit_queries_drop_message(b, m);
                        return r;
                }
        }

        polkit_queries_drop_message(b, m);
        return 1;
}
