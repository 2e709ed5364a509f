/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The library's handle: its bus, the private peer connection to the broker and its reconnect when the
 * broker restarts, client_call() (every method call but Update goes through it), and the last error
 * with its errno (libvfio-broker-private.h says where the rest of the library is). */

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "libvfio-broker-private.h"
#include "macro.h"

void client_set_error(vfio_broker *b, const char *name, const char *message) {
        snprintf(b->error_name, sizeof(b->error_name), "%s", name ?: "");
        snprintf(b->error_message, sizeof(b->error_message), "%s", message ?: "");
}

int client_fail_errno(vfio_broker *b, int r, const char *what) {
        char message[256];
        snprintf(message, sizeof(message), "%s: %s", what, strerror(-r));
        client_set_error(b, "", message);
        return r;
}

/* One errno per broker error, the table the daemon uses too (daemon/error.c). */
int client_error_to_errno(const sd_bus_error *e, int r) {
        BrokerErrorCode code = broker_error_code_from_dbus_name(e->name);
        if (code != BROKER_ERROR_NONE)
                return -broker_error_code_to_errno(code);
        return r < 0 ? r : -EIO;
}

/* A peer-to-peer connection to the broker, used for every call when the broker offers one. Its
 * identity is ours on the bus, so ownership and authorization are unchanged. VFIO_BROKER_PEER=0
 * turns it off. */
void client_open_peer(vfio_broker *b) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *env = getenv("VFIO_BROKER_PEER");
        sd_bus *peer = NULL;
        int fd, r;

        if (env && strcmp(env, "0") == 0)
                return;
        r = sd_bus_call_method(b->bus, BUS_NAME, ROOT_PATH, MANAGER_IFACE, "OpenConnection", NULL, &reply, "");
        if (r < 0 || sd_bus_message_read(reply, "h", &fd) < 0)
                return; /* an older broker: the bus it is */
        fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (fd < 0)
                return;
        if (sd_bus_new(&peer) < 0 || sd_bus_set_fd(peer, fd, fd) < 0) {
                close(fd);
                sd_bus_unref(peer);
                return;
        }
        /* The socketpair carries the broker's credentials, so there is nothing to prove: ANONYMOUS. */
        if (sd_bus_set_anonymous(peer, true) < 0 || sd_bus_negotiate_fds(peer, true) < 0 || sd_bus_start(peer) < 0) {
                sd_bus_flush_close_unref(peer);
                return;
        }
        b->peer = peer;
}

/* The broker restarted (or its peer end went away): the peer connection is dead, the bus is not. */
bool client_connection_lost(int r) {
        return r == -ENOTCONN || r == -ECONNRESET || r == -EPIPE || r == -ESHUTDOWN;
}

int client_call(vfio_broker *b, const char *path, const char *iface, const char *member, sd_bus_message **reply,
                const char *types, ...) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        va_list ap;
        int r;

        client_set_error(b, NULL, NULL);
        for (int attempt = 0;; attempt++) {
                sd_bus *target = b->peer ?: b->bus;

                m = sd_bus_message_unref(m);
                /* No destination on a peer connection: there is no bus in between. */
                r = sd_bus_message_new_method_call(target, &m, b->peer ? NULL : BUS_NAME, path, iface, member);
                if (r < 0)
                        return client_fail_errno(b, r, "Cannot create a method call");
                /* Let polkit ask the user, as a VMM started from a session would expect. */
                (void) sd_bus_message_set_allow_interactive_authorization(m, true);
                if (types && *types) {
                        va_start(ap, types);
                        r = sd_bus_message_appendv(m, types, ap);
                        va_end(ap);
                        if (r < 0)
                                return client_fail_errno(b, r, "Cannot build the method call");
                }
                r = sd_bus_call(target, m, 0, &error, reply);
                if (r >= 0 || !b->peer || !client_connection_lost(r) || attempt > 0)
                        break;
                /* The broker restarted: continue on the bus, and on a new peer connection next time. */
                sd_bus_error_free(&error);
                b->peer = sd_bus_flush_close_unref(b->peer);
                client_open_peer(b);
        }
        if (r < 0) {
                client_set_error(b, error.name, error.message ?: strerror(-r));
                r = client_error_to_errno(&error, r);
                sd_bus_error_free(&error);
                return r;
        }
        return 0;
}

static vfio_broker *broker_new(sd_bus *bus) {
        vfio_broker *b = calloc(1, sizeof(*b));
        if (!b)
                return NULL;
        b->n_ref = 1;
        b->bus = sd_bus_ref(bus);
        return b;
}

_public_ int vfio_broker_open(vfio_broker **ret) {
        _cleanup_(sd_bus_unrefp) sd_bus *bus = NULL;
        int r;

        if (!ret)
                return -EINVAL;
        r = sd_bus_open_system(&bus);
        if (r < 0)
                return r;
        *ret = broker_new(bus);
        if (!*ret)
                return -ENOMEM;
        (*ret)->owns_bus = true;
        client_open_peer(*ret);
        return 0;
}

_public_ int vfio_broker_open_with_bus(sd_bus *bus, vfio_broker **ret) {
        if (!bus || !ret)
                return -EINVAL;
        *ret = broker_new(bus);
        if (!*ret)
                return -ENOMEM;
        client_open_peer(*ret);
        return 0;
}

_public_ vfio_broker *vfio_broker_ref(vfio_broker *b) {
        if (b)
                b->n_ref++;
        return b;
}

_public_ vfio_broker *vfio_broker_unref(vfio_broker *b) {
        if (!b || --b->n_ref > 0)
                return NULL;
        sd_bus_slot_unref(b->balloon_slot);
        sd_bus_flush_close_unref(b->peer);
        if (b->owns_bus)
                sd_bus_flush_close_unref(b->bus);
        else
                sd_bus_unref(b->bus);
        free(b);
        return NULL;
}

_public_ const char *vfio_broker_error_name(const vfio_broker *b) {
        return b ? b->error_name : "";
}

_public_ const char *vfio_broker_error_message(const vfio_broker *b) {
        return b ? b->error_message : "";
}

_public_ sd_bus *vfio_broker_get_bus(vfio_broker *b) {
        return b ? b->bus : NULL;
}
