/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The vfio-user face (see vfio-user-server.h): a served device's listener, which takes one client at a
 * time, the server's start and end, the reports to the watch, and the face's life as an observer of
 * container removal. The client's connection is vfio-user-client.c, what its commands do
 * vfio-user-commands.c, what a session keeps across a daemon restart vfio-user-restart.c; they share
 * the state in vfio-user-server-private.h. */

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "group.h"
#include "log.h"
#include "message-ids.h"
#include "vfio-user-server-private.h"

static VfioUserFace *face_of(Broker *b);

/* The watch, unless the daemon hands over: then the session is left as it is for the next instance. */
const VfioUserWatch *vfio_user_watch_of(VfioUserServer *s, void **ret_userdata) {
        VfioUserFace *f = face_of(s->container->broker);

        if (!f || !f->watch || s->container->broker->handing_over)
                return NULL;
        *ret_userdata = f->userdata;
        s->reported = true;
        return f->watch;
}

/* The end of a request: what it reported is committed (before the reply). */
void vfio_user_report_commit(VfioUserServer *s, bool fds) {
        void *u;
        const VfioUserWatch *w;

        if (!s->reported && !fds)
                return;
        w = vfio_user_watch_of(s, &u);
        s->reported = false;
        if (w && w->commit)
                w->commit(u, s, fds);
}

const char *vfio_user_server_device(const VfioUserServer *s) {
        return s->device;
}

VfioUserServer *vfio_user_server_next(const VfioUserServer *s) {
        return s->next;
}

VfioUserServer *vfio_user_server_find(Container *c, const char *device) {
        for (VfioUserServer *s = c->vfio_user_servers; s; s = s->next)
                if (strcmp(s->device, device) == 0)
                        return s;
        return NULL;
}

/* --- the listener --- */

static int listen_io(sd_event_source *source, int fd, uint32_t revents, void *userdata) {
        VfioUserServer *s = userdata;
        Container *c = s->container;
        _cleanup_close_ int cfd = -EBADF;
        struct ucred cred;
        socklen_t len = sizeof(cred);
        VfioUserClient *cl;
        int r;

        cfd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
                if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                        log_warning_errno(-errno, "vfio-user %s: accept failed: %m", s->device);
                return 0;
        }
        if (getsockopt(cfd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
                log_warning_errno(-errno, "vfio-user %s: cannot read the client's credentials: %m", s->device);
                return 0;
        }
        if (cred.uid != c->uid && cred.uid != 0) {
                log_warning("vfio-user %s: refusing client pid %d: uid %u is neither the container's (%u) nor root.",
                            s->device, (int) cred.pid, (unsigned) cred.uid, (unsigned) c->uid);
                return 0;
        }
        if (s->client) {
                /* The protocol has one client per connection and device; a second VMM learns at once,
                 * instead of waiting forever for its VERSION reply. */
                log_warning("vfio-user %s: refusing client pid %d: pid %d is being served.", s->device,
                            (int) cred.pid, (int) s->client->pid);
                return 0;
        }

        if (++s->last_serial == 0) /* serial 0 means "between messages" in the session page */
                s->last_serial = 1;
        r = vfio_user_client_new(s, TAKE_FD(cfd), cred.uid, cred.pid, s->last_serial, &cl);
        if (r < 0)
                return log_error_errno(r, "vfio-user %s: cannot watch the client: %m", s->device);
        log_event(&(LogEvent) { LOG_MESSAGE_VFIO_USER_CONNECTED, .container = s->container->id,
                                .label = s->container->label, .uid = &cl->uid, .device = s->device },
                  "vfio-user %s: client pid %d uid %u connected.", s->device, (int) cl->pid, (unsigned) cl->uid);
        /* Its socket goes to the fd store, so that a restart keeps the connection. */
        VFIO_USER_REPORT(s, client_changed, true);
        vfio_user_report_commit(s, true);
        return 0;
}

int vfio_user_check_listener(int fd, BrokerError *e) {
        struct stat st;
        int v;
        socklen_t len = sizeof(v);

        if (fstat(fd, &st) < 0)
                return broker_error_set_errno(e, -errno, "Cannot inspect the listener fd");
        if (!S_ISSOCK(st.st_mode))
                return broker_error_set(e, BROKER_ERROR_BAD_MEMORY,
                                        "The listener is not a socket: pass a listening AF_UNIX SOCK_STREAM socket "
                                        "bound at a path the VMM connects to.");
        if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &v, &len) < 0 || v != AF_UNIX)
                return broker_error_set(e, BROKER_ERROR_BAD_MEMORY,
                                        "The listener is not an AF_UNIX socket; vfio-user needs one to pass fds.");
        len = sizeof(v);
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &len) < 0 || v != SOCK_STREAM)
                return broker_error_set(e, BROKER_ERROR_BAD_MEMORY,
                                        "The listener is not a SOCK_STREAM socket, as vfio-user clients expect.");
        len = sizeof(v);
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) < 0 || v != 1)
                return broker_error_set(e, BROKER_ERROR_BAD_MEMORY,
                                        "The socket is not listening: call listen() on it before passing it.");
        return 0;
}

static VfioUserSessionPage *session_map(int fd) {
        void *p = mmap(NULL, sizeof(VfioUserSessionPage), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        return p == MAP_FAILED ? NULL : p;
}

/* The server around a device already open: listen_fd and session_fd are taken, also on failure. */
int vfio_user_server_start(Container *c, const char *device, uint32_t id, BackendDevice *dev, int listen_fd,
                           int session_fd, VfioUserServer **ret) {
        VfioUserServer *s;
        int r;

        s = calloc(1, sizeof(*s));
        if (!s) {
                safe_close(listen_fd);
                safe_close(session_fd);
                return -ENOMEM;
        }
        s->container = c;
        s->id = id;
        s->dev = dev;
        s->listen_fd = listen_fd;
        s->session_fd = session_fd;
        s->device = strdup(device);
        s->page = session_map(session_fd);
        if (!s->device || !s->page) {
                r = -ENOMEM;
                goto fail;
        }
        r = sd_event_add_io(c->broker->event, &s->listen_source, listen_fd, EPOLLIN, listen_io, s);
        if (r < 0)
                goto fail;
        s->next = c->vfio_user_servers;
        c->vfio_user_servers = s;
        *ret = s;
        return 0;

fail:
        if (s->page)
                munmap(s->page, sizeof(VfioUserSessionPage));
        safe_close(s->session_fd);
        safe_close(s->listen_fd);
        free(s->device);
        free(s);
        return r;
}

int vfio_user_server_new(Container *c, const char *device, int listen_fd, VfioUserServer **ret, BrokerError *e) {
        _cleanup_close_ int fd = -EBADF, session = -EBADF;
        VfioUserServer *s;
        BackendDevice *dev = NULL;
        VfioUserFace *f;
        Group *g;
        int r, flags;

        r = vfio_user_check_listener(listen_fd, e);
        if (r < 0)
                return r;
        r = vfio_user_observe(c->broker, &f);
        if (r < 0)
                return broker_error_set_errno(e, r, "Cannot watch the container's removal");
        g = broker_find_group_of_device(c->broker, device);
        if (!g || g->container != c)
                return broker_error_set(e, BROKER_ERROR_NO_SUCH_DEVICE,
                                        "Device %s is not in a group attached to this container; AttachGroup() "
                                        "its group first.", device);
        if (vfio_user_server_find(c, device))
                return broker_error_set(e, BROKER_ERROR_BUSY,
                                        "Device %s is already served over vfio-user; StopVfioUser() it first.", device);

        /* The caller's fd is borrowed from the D-Bus message. O_NONBLOCK is on the open file, so the
         * caller's copy turns non-blocking too: it must not accept() on it anyway. */
        fd = fcntl(listen_fd, F_DUPFD_CLOEXEC, 3);
        if (fd < 0)
                return broker_error_set_errno(e, -errno, "Cannot duplicate the listener fd");
        flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
                return broker_error_set_errno(e, -errno, "Cannot make the listener non-blocking");
        session = memfd_create("vfio-broker-vfio-user-session", MFD_CLOEXEC);
        if (session < 0 || ftruncate(session, sizeof(VfioUserSessionPage)) < 0)
                return broker_error_set_errno(e, -errno, "Cannot create the session's memory file");

        r = backend_container_get_device(c->backend, g->id, device, &dev);
        if (r < 0) {
                /* The backend's errno, worded for the VMM author: the group is attached, so what remains
                 * is a device that vanished or that the kernel will not open (held elsewhere). */
                if (r == -ENODEV || r == -ENOENT)
                        return broker_error_set(e, BROKER_ERROR_NO_SUCH_DEVICE, "Device %s is not in its group any "
                                                "more.", device);
                if (r == -EBUSY)
                        return broker_error_set(e, BROKER_ERROR_BUSY, "Device %s is in use outside the broker.",
                                                device);
                return broker_error_set_errno(e, r, "Cannot open device %s", device);
        }
        r = vfio_user_server_start(c, device, ++f->last_id, dev, TAKE_FD(fd), TAKE_FD(session), &s);
        if (r < 0) {
                backend_device_free(dev);
                return broker_error_set_errno(e, r, "Cannot watch the listener");
        }
        memcpy(s->page->magic, VFIO_USER_SESSION_MAGIC, sizeof(s->page->magic));

        log_info("Container %s: serving %s over vfio-user.", c->path, device);
        /* The listener, the device and the session page go to the fd store before the reply. */
        VFIO_USER_REPORT(s, server_added);
        vfio_user_report_commit(s, true);
        if (ret)
                *ret = s;
        return 0;
}

static VfioUserServer *server_free(VfioUserServer *s, VfioUserClientEnd end) {
        Container *c;

        if (!s)
                return NULL;
        c = s->container;
        for (VfioUserServer **p = &c->vfio_user_servers; *p; p = &(*p)->next)
                if (*p == s) {
                        *p = s->next;
                        break;
                }
        vfio_user_client_free_full(s->client, "the device is no longer served", end);
        VFIO_USER_REPORT(s, server_removed);
        sd_event_source_disable_unref(s->listen_source);
        safe_close(s->listen_fd);
        /* On a hand-over the fd store keeps a copy of the device fd: closing ours resets nothing. */
        backend_device_free(s->dev);
        if (s->page)
                munmap(s->page, sizeof(VfioUserSessionPage));
        safe_close(s->session_fd);
        if (c->broker->handing_over)
                log_info("Container %s: %s served over vfio-user is left to the next instance.", c->path, s->device);
        else
                log_info("Container %s: stopped serving %s over vfio-user.", c->path, s->device);
        strv_free(s->stored_fds);
        free(s->device);
        free(s);
        return NULL;
}

VfioUserServer *vfio_user_server_free(VfioUserServer *s) {
        return server_free(s, VFIO_USER_CLIENT_END_UNMAP);
}

/* --- the face's life --- */

/* The container goes: before it is freed, the devices (which use its backend container) go first. Its
 * mappings are left to the container's teardown, which unmaps everything at once (or, on a hand-over,
 * leaves them to the next instance). */
static void vfio_user_container_removed(void *userdata, Container *c) {
        while (c->vfio_user_servers)
                server_free(c->vfio_user_servers, VFIO_USER_CLIENT_END_KEEP_MAPPINGS);
}

static void vfio_user_done(void *userdata) {
        free(userdata);
}

static const BrokerObserver vfio_user_observer = {
        .container_removed = vfio_user_container_removed,
        .done = vfio_user_done,
};

static VfioUserFace *face_of(Broker *b) {
        for (size_t i = 0; i < b->n_observers; i++)
                if (b->observers[i].ops == &vfio_user_observer)
                        return b->observers[i].userdata;
        return NULL;
}

/* The vfio-user face hears of removals like the other faces; it subscribes with its first server, or
 * when the state store watches it (which then comes first among the observers: a container's sessions
 * are recorded gone before the container is). */
int vfio_user_observe(Broker *b, VfioUserFace **ret) {
        VfioUserFace *f = face_of(b);
        int r;

        if (!f) {
                f = calloc(1, sizeof(*f));
                if (!f)
                        return -ENOMEM;
                r = broker_observe(b, &vfio_user_observer, f);
                if (r < 0) {
                        free(f);
                        return r;
                }
        }
        *ret = f;
        return 0;
}

int vfio_user_watch(Broker *b, const VfioUserWatch *w, void *userdata) {
        VfioUserFace *f;
        int r;

        r = vfio_user_observe(b, &f);
        if (r < 0)
                return r;
        f->watch = w;
        f->userdata = userdata;
        return 0;
}
