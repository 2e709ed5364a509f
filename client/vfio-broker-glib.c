/* SPDX-License-Identifier: LGPL-2.1-or-later */

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
