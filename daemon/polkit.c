/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <search.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "polkit.h"

/* One CheckAuthorization call for one action of one method call. */
typedef struct PolkitRequest PolkitRequest;

typedef struct PolkitQuery {
        struct PolkitQuery *next;
        PolkitRequest *request;
        char *action;
        sd_bus_slot *slot; /* the call to polkit, while in flight */
        bool answered;
        bool allowed;
        char *denial;      /* why not, for the AccessDenied message */
} PolkitQuery;

typedef struct PolkitCaller PolkitCaller;

/* Everything asked for one method call, until its handler consumes the answers. */
struct PolkitRequest {
        PolkitRegistry *registry;
        sd_bus_message *message; /* the key */
        PolkitCaller *caller;
        PolkitQuery *queries;
        sd_event_source *gc;     /* drops answers no handler came back for */
};

struct PolkitCaller {
        char *name; /* the key */
        unsigned n_pending;
};

struct PolkitRegistry {
        sd_bus *bus;
        sd_event *event;
        void *requests; /* tsearch() tree of PolkitRequest, by message */
        void *callers;  /* tsearch() tree of PolkitCaller, by name */
};

static int request_compare(const void *a, const void *b) {
        const PolkitRequest *x = a, *y = b;
        return x->message < y->message ? -1 : x->message > y->message;
}

static int caller_compare(const void *a, const void *b) {
        return strcmp(((const PolkitCaller *) a)->name, ((const PolkitCaller *) b)->name);
}

static void query_free(PolkitQuery *q) {
        sd_bus_slot_unref(q->slot);
        free(q->action);
        free(q->denial);
        free(q);
}

static void request_free(PolkitRequest *req) {
        PolkitRegistry *reg = req->registry;

        (void) tdelete(req, &reg->requests, request_compare);
        if (req->caller && --req->caller->n_pending == 0) {
                PolkitCaller *c = req->caller;
                (void) tdelete(c, &reg->callers, caller_compare);
                free(c->name);
                free(c);
        }
        while (req->queries) {
                PolkitQuery *q = req->queries;
                req->queries = q->next;
                query_free(q);
        }
        sd_event_source_disable_unref(req->gc);
        sd_bus_message_unref(req->message);
        free(req);
}

static PolkitRequest *request_find(PolkitRegistry *reg, sd_bus_message *m) {
        PolkitRequest key = { .message = m };
        void *p = tfind(&key, &reg->requests, request_compare);
        return p ? *(PolkitRequest **) p : NULL;
}

int polkit_registry_new(sd_bus *bus, sd_event *event, PolkitRegistry **ret) {
        PolkitRegistry *reg;

        reg = calloc(1, sizeof(*reg));
        if (!reg)
                return -ENOMEM;
        reg->bus = sd_bus_ref(bus);
        reg->event = sd_event_ref(event);
        *ret = reg;
        return 0;
}

PolkitRegistry *polkit_registry_free(PolkitRegistry *reg) {
        if (!reg)
                return NULL;
        while (reg->requests)
                request_free(*(PolkitRequest **) reg->requests);
        assert(!reg->callers);
        sd_bus_unref(reg->bus);
        sd_event_unref(reg->event);
        free(reg);
        return NULL;
}

void polkit_forget(PolkitRegistry *reg, sd_bus_message *m) {
        PolkitRequest *req;

        if (reg && (req = request_find(reg, m)))
                request_free(req);
}

static bool request_in_flight(const PolkitRequest *req) {
        for (const PolkitQuery *q = req->queries; q; q = q->next)
                if (!q->answered)
                        return true;
        return false;
}

/* Runs at idle priority, so only once the bus has dispatched everything queued, the re-queued call
 * among it: an answer still here then has nobody coming back for it (the object went away). */
static int on_request_gc(sd_event_source *s, void *userdata) {
        PolkitRequest *req = userdata;

        if (!request_in_flight(req))
                request_free(req);
        return 0;
}

static int polkit_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        PolkitQuery *q = userdata;
        PolkitRequest *req = q->request;
        const sd_bus_error *e;
        int authorized = 0, challenge = 0, r;

        q->slot = sd_bus_slot_unref(q->slot);
        q->answered = true;
        q->allowed = false;

        e = sd_bus_message_get_error(reply);
        if (e) {
                log_warning("polkit could not decide %s: %s", q->action, e->message ?: e->name);
                if (asprintf(&q->denial, "polkit is not available (%s), and only root may %s without it.",
                             e->name, strcmp(q->action, POLKIT_ACTION_MANAGE) == 0 ?
                             "act on another connection's container" : "attach VFIO groups") < 0)
                        q->denial = NULL;
        } else {
                r = sd_bus_message_enter_container(reply, 'r', "bba{ss}");
                if (r >= 0)
                        r = sd_bus_message_read(reply, "bb", &authorized, &challenge);
                if (r < 0) {
                        log_warning_errno(r, "Malformed answer from polkit: %m");
                        q->denial = strdup("polkit gave a malformed answer.");
                } else if (authorized)
                        q->allowed = true;
                else if (asprintf(&q->denial, "Not authorized by polkit for %s%s.", q->action,
                                  challenge ? " (interactive authentication would be needed: call with "
                                              "interactive authorization allowed)" : "") < 0)
                        q->denial = NULL;
        }

        /* Run the handler again from the top; it finds the answer in the registry. */
        r = sd_bus_enqueue_for_read(sd_bus_message_get_bus(req->message), req->message);
        if (r < 0)
                log_error_errno(r, "Failed to re-queue a method call after polkit's answer: %m");
        if (!req->gc) {
                r = sd_event_add_defer(req->registry->event, &req->gc, on_request_gc, req);
                if (r >= 0)
                        r = sd_event_source_set_priority(req->gc, SD_EVENT_PRIORITY_IDLE);
                if (r < 0)
                        log_warning_errno(r, "Cannot watch a polkit answer: %m");
        }
        if (req->gc)
                (void) sd_event_source_set_enabled(req->gc, SD_EVENT_ONESHOT);
        return 0;
}

static int query_start(PolkitRequest *req, const char *subject, const PolkitCheck *check) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *call = NULL;
        sd_bus_message *m = req->message;
        PolkitQuery *q;
        int r;

        r = sd_bus_message_new_method_call(req->registry->bus, &call, "org.freedesktop.PolicyKit1",
                                           "/org/freedesktop/PolicyKit1/Authority",
                                           "org.freedesktop.PolicyKit1.Authority", "CheckAuthorization");
        if (r < 0)
                return r;
        r = sd_bus_message_append(call, "(sa{sv})s", "system-bus-name", 1, "name", "s", subject, check->action);
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
        r = sd_bus_message_append(call, "us", (uint32_t) !!sd_bus_message_get_allow_interactive_authorization(m),
                                  "");
        if (r < 0)
                return r;

        q = calloc(1, sizeof(*q));
        if (!q)
                return -ENOMEM;
        q->action = strdup(check->action);
        if (!q->action) {
                query_free(q);
                return -ENOMEM;
        }
        /* An interactive authentication can take a person a while. */
        q->request = req;
        r = sd_bus_call_async(req->registry->bus, &q->slot, call, polkit_reply, q,
                              sd_bus_message_get_allow_interactive_authorization(m) ? 300ULL * 1000000ULL : 0);
        if (r < 0) {
                query_free(q);
                return r;
        }
        q->next = req->queries;
        req->queries = q;
        return 0;
}

static int request_new(PolkitRegistry *reg, sd_bus_message *m, const char *subject, PolkitRequest **ret) {
        PolkitCaller key = { .name = (char *) subject }, *caller;
        PolkitRequest *req;
        void *p;

        p = tfind(&key, &reg->callers, caller_compare);
        caller = p ? *(PolkitCaller **) p : NULL;
        if (caller && caller->n_pending >= POLKIT_PENDING_PER_CALLER_MAX)
                return -EBUSY;
        if (!caller) {
                caller = calloc(1, sizeof(*caller));
                if (!caller)
                        return -ENOMEM;
                caller->name = strdup(subject);
                if (!caller->name || !tsearch(caller, &reg->callers, caller_compare)) {
                        free(caller->name);
                        free(caller);
                        return -ENOMEM;
                }
        }

        req = calloc(1, sizeof(*req));
        if (req) {
                /* The key before the insertion: the tree orders by it. */
                req->registry = reg;
                req->message = m;
        }
        if (!req || !tsearch(req, &reg->requests, request_compare)) {
                free(req);
                if (caller->n_pending == 0) {
                        (void) tdelete(caller, &reg->callers, caller_compare);
                        free(caller->name);
                        free(caller);
                }
                return -ENOMEM;
        }
        sd_bus_message_ref(m);
        req->caller = caller;
        caller->n_pending++;
        *ret = req;
        return 0;
}

int polkit_check_async(PolkitRegistry *reg, sd_bus_message *m, const char *subject, uid_t uid,
                       const PolkitCheck *checks, size_t n_checks, sd_bus_error *error) {
        PolkitRequest *req;
        int r;

        assert(m);

        if (!reg || !subject)
                return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED,
                                        "Cannot ask polkit about this caller; refusing.");

        req = request_find(reg, m);
        for (size_t i = 0; i < n_checks; i++) {
                PolkitQuery *q = NULL;

                for (PolkitQuery *j = req ? req->queries : NULL; j && !q; j = j->next)
                        if (strcmp(j->action, checks[i].action) == 0)
                                q = j;
                if (!q) {
                        if (!req) {
                                r = request_new(reg, m, subject, &req);
                                if (r == -EBUSY)
                                        return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                                                 "%s already has %d calls waiting for polkit; "
                                                                 "wait for their answers before sending more.",
                                                                 subject, POLKIT_PENDING_PER_CALLER_MAX);
                                if (r < 0)
                                        return r;
                        }
                        r = query_start(req, subject, &checks[i]);
                        if (r < 0) {
                                request_free(req);
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
                        request_free(req);
                        return r;
                }
        }
        if (req)
                request_free(req);
        return 1;
}
