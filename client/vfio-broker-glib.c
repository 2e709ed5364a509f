/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <gio/gio.h>
#include <poll.h>
#include <time.h>

#include "vfio-broker/vfio-broker-glib.h"

#define _public_ __attribute__((visibility("default")))

typedef struct BrokerSource {
        GSource source;
        vfio_broker *broker;
        gpointer tag;
} BrokerSource;

static gboolean broker_source_prepare(GSource *source, gint *timeout) {
        BrokerSource *s = (BrokerSource *) source;
        uint64_t usec = UINT64_MAX;
        int events = vfio_broker_get_events(s->broker);

        /* Wait for what sd-bus wants right now (POLLOUT only while it has something to write). */
        g_source_modify_unix_fd(source, s->tag, (events & POLLIN ? G_IO_IN : 0) | (events & POLLOUT ? G_IO_OUT : 0) |
                                                G_IO_HUP | G_IO_ERR);

        *timeout = -1;
        if (vfio_broker_get_timeout(s->broker, &usec) >= 0 && usec != UINT64_MAX) {
                struct timespec ts;
                uint64_t now;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                now = (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000;
                if (usec <= now)
                        return TRUE;
                *timeout = (gint) MIN((usec - now + 999) / 1000, (uint64_t) G_MAXINT);
        }
        return FALSE;
}

static gboolean broker_source_check(GSource *source) {
        BrokerSource *s = (BrokerSource *) source;
        return g_source_query_unix_fd(source, s->tag) != 0;
}

static gboolean broker_source_dispatch(GSource *source, GSourceFunc callback, gpointer user_data) {
        BrokerSource *s = (BrokerSource *) source;
        int r;

        /* Everything queued, in one go: one signal may wake many handlers. */
        while ((r = vfio_broker_process(s->broker)) > 0)
                ;
        if (r < 0 && r != -EAGAIN)
                return G_SOURCE_REMOVE; /* the connection is gone */
        return G_SOURCE_CONTINUE;
}

static void broker_source_finalize(GSource *source) {
        BrokerSource *s = (BrokerSource *) source;
        vfio_broker_unref(s->broker);
}

static GSourceFuncs broker_source_funcs = {
        .prepare = broker_source_prepare,
        .check = broker_source_check,
        .dispatch = broker_source_dispatch,
        .finalize = broker_source_finalize,
};

_public_ GSource *vfio_broker_glib_source_new(vfio_broker *b) {
        BrokerSource *s;
        int fd;

        g_return_val_if_fail(b, NULL);
        fd = vfio_broker_get_fd(b);
        if (fd < 0)
                return NULL;
        s = (BrokerSource *) g_source_new(&broker_source_funcs, sizeof(BrokerSource));
        s->tag = g_source_add_unix_fd(&s->source, fd, G_IO_IN | G_IO_HUP | G_IO_ERR);
        g_source_set_name(&s->source, "vfio-broker");
        s->broker = vfio_broker_ref(b);
        return &s->source;
}

_public_ guint vfio_broker_glib_attach(vfio_broker *b, GMainContext *context) {
        GSource *s = vfio_broker_glib_source_new(b);
        guint id;

        if (!s)
                return 0;
        id = g_source_attach(s, context);
        g_source_unref(s);
        return id;
}

/* Every org.vfiobroker.Broker1.Error.* name of the SPEC; the D-Bus standard errors the broker also
 * returns are GLib's G_DBUS_ERROR already. */
static const GDBusErrorEntry broker_error_entries[] = {
        { VFIO_BROKER_ERROR_NO_SUCH_GROUP,  "org.vfiobroker.Broker1.Error.NoSuchGroup"   },
        { VFIO_BROKER_ERROR_NO_SUCH_DEVICE, "org.vfiobroker.Broker1.Error.NoSuchDevice"  },
        { VFIO_BROKER_ERROR_NOT_VIABLE,     "org.vfiobroker.Broker1.Error.NotViable"     },
        { VFIO_BROKER_ERROR_BUSY,           "org.vfiobroker.Broker1.Error.Busy"          },
        { VFIO_BROKER_ERROR_NO_GROUPS,      "org.vfiobroker.Broker1.Error.NoGroups"      },
        { VFIO_BROKER_ERROR_OVERLAP,        "org.vfiobroker.Broker1.Error.Overlap"       },
        { VFIO_BROKER_ERROR_WOULD_SPLIT,    "org.vfiobroker.Broker1.Error.WouldSplit"    },
        { VFIO_BROKER_ERROR_OUT_OF_RANGE,   "org.vfiobroker.Broker1.Error.OutOfRange"    },
        { VFIO_BROKER_ERROR_UNALIGNED,      "org.vfiobroker.Broker1.Error.Unaligned"     },
        { VFIO_BROKER_ERROR_NOT_MAPPED,     "org.vfiobroker.Broker1.Error.NotMapped"     },
        { VFIO_BROKER_ERROR_BAD_MEMORY,     "org.vfiobroker.Broker1.Error.BadMemory"     },
        { VFIO_BROKER_ERROR_QUOTA_EXCEEDED, "org.vfiobroker.Broker1.Error.QuotaExceeded" },
        { VFIO_BROKER_ERROR_KERNEL,         "org.vfiobroker.Broker1.Error.Kernel"        },
};

_public_ GQuark vfio_broker_error_quark(void) {
        static gsize quark = 0;

        /* Registers once, thread-safely; the entries map both ways (reply name <-> domain and code). */
        g_dbus_error_register_error_domain("vfio-broker-error-quark", &quark, broker_error_entries,
                                           G_N_ELEMENTS(broker_error_entries));
        return (GQuark) quark;
}
