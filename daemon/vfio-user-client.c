/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* One client's connection to a served device (vfio-user-server-private.h): its non-blocking framing with
 * fds (one message in, then its reply out), the session page that tells a crash's next instance whether
 * the stream was at a message boundary, the dispatch of a parsed message to its command, and the
 * client's end, which drops its DMA entries and interrupt eventfds. */

#include <assert.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "log.h"
#include "message-ids.h"
#include "vfio-user-server-private.h"

/* Messages handled per wakeup before the loop gets a turn: a client that pipelines without end must
 * not starve the bus or the other clients. */
#define MESSAGES_PER_WAKEUP 64

static inline void *mfree(void *p) {
        free(p);
        return NULL;
}

static void client_set_busy(VfioUserClient *cl, bool busy) {
        if (cl->server->page)
                __atomic_store_n(&cl->server->page->busy, busy ? cl->serial : 0, __ATOMIC_SEQ_CST);
}

bool vfio_user_client_inside_message(const VfioUserClient *cl) {
        return cl->header_have > 0 || cl->n_fds > 0 || cl->out;
}

static void client_clear_message(VfioUserClient *cl) {
        for (size_t i = 0; i < cl->n_fds; i++)
                safe_close(cl->fds[i]);
        cl->n_fds = 0;
        cl->payload = mfree(cl->payload);
        cl->payload_have = 0;
        cl->header_have = 0;
}

/* Drops one of the client's DMA entries; with mapped, the container's mapping goes too. report: the
 * state store hears of it (not when the whole client goes without unmapping). */
void vfio_user_client_dma_drop(VfioUserClient *cl, VfioUserDma *d, bool report) {
        Container *c = cl->server->container;
        VfioUserDmaInfo info = vfio_user_dma_info(d);

        mapping_table_remove(&cl->dma, &d->node);
        /* Reported before the unmap commits: no committed state has the mapping without the entry. */
        if (report)
                VFIO_USER_REPORT(cl->server, dma_removed, &info);
        if (d->mapped) {
                BrokerError e = BROKER_ERROR_INIT;
                int r = container_unmap(c, d->node.first, mapping_table_node_size(&d->node), &e);
                /* The owner may have unmapped it over D-Bus meanwhile: then there is nothing to do. */
                if (r < 0 && e.code != BROKER_ERROR_NOT_MAPPED)
                        log_warning("vfio-user %s: cannot drop the mapping at 0x%" PRIx64 ": %s", cl->server->device,
                                    d->node.first, e.message);
        }
        free(d);
}

void vfio_user_client_free(VfioUserClient *cl, const char *reason) {
        vfio_user_client_free_full(cl, reason, VFIO_USER_CLIENT_END_UNMAP);
}

void vfio_user_client_free_full(VfioUserClient *cl, const char *reason, VfioUserClientEnd end) {
        VfioUserServer *s;
        MappingTableNode *node, *next;
        size_t unreported;

        if (!cl)
                return;
        s = cl->server;
        if (s->container->broker->handing_over)
                /* Not a disconnection: the socket stays open in the fd store for the next instance. */
                log_info("vfio-user %s: client pid %d left to the next instance.", s->device, (int) cl->pid);
        else
                log_event(&(LogEvent) { LOG_MESSAGE_VFIO_USER_DISCONNECTED, .container = s->container->id,
                                        .label = s->container->label, .uid = &cl->uid, .device = s->device,
                                        .reason = reason },
                          "vfio-user %s: client pid %d uid %u disconnected: %s", s->device, (int) cl->pid,
                          (unsigned) cl->uid, reason);

        unreported = end == VFIO_USER_CLIENT_END_KEEP_MAPPINGS ? mapping_table_size(&cl->dma) : 0;
        MAPPING_TABLE_FOREACH_SAFE(node, next, &cl->dma) {
                VfioUserDma *d = container_of(node, VfioUserDma, node);
                if (end == VFIO_USER_CLIENT_END_KEEP_MAPPINGS)
                        d->mapped = false;
                vfio_user_client_dma_drop(cl, d, end == VFIO_USER_CLIENT_END_UNMAP);
        }

        /* The protocol: the client's interrupt fds are closed, the device state is otherwise kept. Not
         * on a hand-over: the next instance serves the same client, whose eventfds stay wired. */
        for (uint32_t i = 0; i < 32 && !s->container->broker->handing_over; i++)
                if (cl->irq_indexes & (UINT32_C(1) << i)) {
                        int r = s->dev->ops->set_irqs(s->dev, VFIO_USER_IRQ_SET_DATA_NONE |
                                                      VFIO_USER_IRQ_SET_ACTION_TRIGGER, i, 0, 0, NULL, NULL);
                        if (r < 0)
                                log_warning_errno(r, "vfio-user %s: cannot release interrupt index %u: %m", s->device, i);
                }

        client_clear_message(cl);
        free(cl->out);
        sd_event_source_disable_unref(cl->source);
        safe_close(cl->fd);
        if (!s->container->broker->handing_over)
                client_set_busy(cl, false);
        s->client = NULL;
        VFIO_USER_REPORT(s, client_removed, unreported);
        free(cl);
        vfio_user_report_commit(s, true);
}

/* --- replies --- */

static int client_send(VfioUserClient *cl) {
        while (cl->out && cl->out_sent < cl->out_size) {
                struct iovec iov = { cl->out + cl->out_sent, cl->out_size - cl->out_sent };
                union {
                        struct cmsghdr cmsghdr;
                        uint8_t buf[CMSG_SPACE(sizeof(int))];
                } control = {};
                struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
                ssize_t n;

                if (cl->out_sent == 0 && cl->out_fd >= 0) {
                        struct cmsghdr *cmsg;

                        mh.msg_control = &control;
                        mh.msg_controllen = sizeof(control);
                        cmsg = CMSG_FIRSTHDR(&mh);
                        cmsg->cmsg_level = SOL_SOCKET;
                        cmsg->cmsg_type = SCM_RIGHTS;
                        cmsg->cmsg_len = CMSG_LEN(sizeof(int));
                        memcpy(CMSG_DATA(cmsg), &cl->out_fd, sizeof(int));
                }
                n = sendmsg(cl->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
                if (n < 0) {
                        if (errno == EAGAIN || errno == EINTR)
                                return sd_event_source_set_io_events(cl->source, EPOLLOUT);
                        return -errno;
                }
                cl->out_sent += (size_t) n;
        }
        /* The reply is out whole: the stream is at a message boundary again. */
        if (cl->out)
                client_set_busy(cl, false);
        cl->out = mfree(cl->out);
        cl->out_size = cl->out_sent = 0;
        cl->out_fd = -EBADF;
        return sd_event_source_set_io_events(cl->source, EPOLLIN);
}

/* Queues the reply to the current message (nothing when the client asked for none). */
int vfio_user_client_reply(VfioUserClient *cl, const void *payload, size_t size, int fd) {
        VfioUserHeader h = {
                .msg_id = cl->header.msg_id,
                .command = cl->header.command,
                .msg_size = (uint32_t) (sizeof(h) + size),
                .flags = VFIO_USER_FLAGS_TYPE_REPLY,
        };

        assert(!cl->out);
        /* What the message changed survives the daemon's death before the client hears of it. */
        vfio_user_report_commit(cl->server, false);
        if (cl->header.flags & VFIO_USER_FLAGS_NO_REPLY)
                return 0;
        cl->out = malloc(sizeof(h) + size);
        if (!cl->out)
                return -ENOMEM;
        memcpy(cl->out, &h, sizeof(h));
        if (size > 0)
                memcpy(cl->out + sizeof(h), payload, size);
        cl->out_size = sizeof(h) + size;
        cl->out_sent = 0;
        cl->out_fd = fd;
        return client_send(cl);
}

int vfio_user_client_reply_error(VfioUserClient *cl, int error) {
        VfioUserHeader h = {
                .msg_id = cl->header.msg_id,
                .command = cl->header.command,
                .msg_size = sizeof(h),
                .flags = VFIO_USER_FLAGS_TYPE_REPLY | VFIO_USER_FLAGS_ERROR,
                .error_no = (uint32_t) (error < 0 ? -error : error),
        };

        assert(!cl->out);
        vfio_user_report_commit(cl->server, false);
        if (cl->header.flags & VFIO_USER_FLAGS_NO_REPLY)
                return 0;
        cl->out = malloc(sizeof(h));
        if (!cl->out)
                return -ENOMEM;
        memcpy(cl->out, &h, sizeof(h));
        cl->out_size = sizeof(h);
        cl->out_sent = 0;
        cl->out_fd = -EBADF;
        return client_send(cl);
}

/* --- dispatch --- */

/* Returns < 0 to disconnect the client, with *reason set. */
static int client_handle(VfioUserClient *cl, const char **reason, VfioUserProblem *p) {
        VfioUserRequest req;
        int r;

        r = vfio_user_request_parse(&cl->header, cl->payload, cl->payload_have, cl->n_fds, &req, p);
        if (r < 0 && p->fatal) {
                *reason = p->reason;
                return r;
        }
        if (!cl->negotiated && cl->header.command != VFIO_USER_VERSION) {
                *reason = "the first message must be VERSION";
                return -EPROTO;
        }
        if (cl->negotiated && cl->header.command == VFIO_USER_VERSION) {
                *reason = "VERSION sent twice";
                return -EPROTO;
        }
        if (r < 0) {
                log_debug("vfio-user %s: %s refused: %s", cl->server->device,
                          vfio_user_command_name(cl->header.command), p->reason);
                r = vfio_user_client_reply_error(cl, r);
        } else
                r = vfio_user_command_handle(cl, &req);
        if (r < 0)
                *reason = r == -ENOMEM ? "out of memory" : "cannot send the reply";
        return r;
}

/* --- receiving --- */

/* Receives into buf, collecting fds into the message's. Returns bytes received, 0 at EOF, -EAGAIN, or
 * -EBADMSG with *reason when the client sends more fds than a message may carry. */
static ssize_t client_recv(VfioUserClient *cl, void *buf, size_t size, const char **reason) {
        union {
                struct cmsghdr cmsghdr;
                uint8_t buf[CMSG_SPACE(sizeof(int) * VFIO_USER_SERVER_MAX_MSG_FDS)];
        } control;
        struct iovec iov = { buf, size };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control,
                             .msg_controllen = sizeof(control) };
        bool overflow = false;
        ssize_t n;

        n = recvmsg(cl->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0)
                return errno == EINTR ? -EAGAIN : -errno;

        for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&mh); cmsg; cmsg = CMSG_NXTHDR(&mh, cmsg)) {
                size_t k;
                if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
                        continue;
                k = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t i = 0; i < k; i++) {
                        int fd;
                        memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
                        if (cl->n_fds < VFIO_USER_SERVER_MAX_MSG_FDS)
                                cl->fds[cl->n_fds++] = fd;
                        else {
                                safe_close(fd);
                                overflow = true;
                        }
                }
        }
        /* The kernel drops (closes) what did not fit in the control buffer and says so. */
        if (overflow || (mh.msg_flags & MSG_CTRUNC)) {
                *reason = "a message carries more fds than the 16 the broker accepts (max_msg_fds)";
                return -EBADMSG;
        }
        return n;
}

/* Returns 1 when a whole message is in, 0 when more is to come, < 0 (with *reason) to disconnect. */
static int client_read(VfioUserClient *cl, const char **reason, VfioUserProblem *p) {
        ssize_t n;
        int r;

        if (cl->header_have < sizeof(cl->header)) {
                bool starts = cl->header_have == 0 && cl->n_fds == 0;

                /* Busy before the first byte may leave the socket, idle again if none did. */
                if (starts)
                        client_set_busy(cl, true);
                n = client_recv(cl, (uint8_t *) &cl->header + cl->header_have, sizeof(cl->header) - cl->header_have,
                                reason);
                if (starts && n <= 0 && cl->n_fds == 0)
                        client_set_busy(cl, false);
                if (n == -EAGAIN)
                        return 0;
                if (n == 0) {
                        *reason = cl->header_have > 0 || cl->n_fds > 0 ? "connection closed inside a message header (truncated header)"
                                                                       : "the client closed the connection";
                        return -ECONNRESET;
                }
                if (n < 0) {
                        if (!*reason)
                                *reason = "receive failed";
                        return (int) n;
                }
                cl->header_have += (size_t) n;
                if (cl->header_have < sizeof(cl->header))
                        return 0;

                r = vfio_user_header_check(&cl->header, p);
                if (r < 0) {
                        *reason = p->reason;
                        return r;
                }
                if (cl->header.msg_size > sizeof(cl->header)) {
                        cl->payload = malloc(cl->header.msg_size - sizeof(cl->header));
                        if (!cl->payload) {
                                *reason = "out of memory";
                                return -ENOMEM;
                        }
                }
        }

        while (cl->payload_have < cl->header.msg_size - sizeof(cl->header)) {
                n = client_recv(cl, cl->payload + cl->payload_have,
                                cl->header.msg_size - sizeof(cl->header) - cl->payload_have, reason);
                if (n == -EAGAIN)
                        return 0;
                if (n == 0) {
                        *reason = "connection closed inside a message (its msg_size is larger than what was sent)";
                        return -ECONNRESET;
                }
                if (n < 0) {
                        if (!*reason)
                                *reason = "receive failed";
                        return (int) n;
                }
                cl->payload_have += (size_t) n;
        }
        return 1;
}

static int client_io(sd_event_source *source, int fd, uint32_t revents, void *userdata) {
        VfioUserClient *cl = userdata;
        const char *reason = NULL;
        VfioUserProblem p = {};
        int r;

        if (cl->out) {
                r = client_send(cl);
                if (r < 0) {
                        vfio_user_client_free(cl, "cannot send a reply (the client stopped reading or left)");
                        return 0;
                }
                if (cl->out)
                        return 0;
        }

        for (unsigned i = 0; i < MESSAGES_PER_WAKEUP && !cl->out; i++) {
                r = client_read(cl, &reason, &p);
                if (r == 0)
                        return 0;
                if (r < 0) {
                        if (r == -ECONNRESET && cl->header_have == 0 && cl->n_fds == 0)
                                vfio_user_client_free(cl, reason);
                        else {
                                log_warning("vfio-user %s: malformed message from pid %d, disconnecting: %s",
                                            cl->server->device, (int) cl->pid, reason);
                                vfio_user_client_free(cl, reason);
                        }
                        return 0;
                }
                r = client_handle(cl, &reason, &p);
                if (r < 0) {
                        log_warning("vfio-user %s: disconnecting pid %d: %s", cl->server->device, (int) cl->pid,
                                    reason);
                        vfio_user_client_free(cl, reason);
                        return 0;
                }
                client_clear_message(cl);
                if (!cl->out) /* handled and answered (or no answer asked for) */
                        client_set_busy(cl, false);
        }
        return 0;
}

/* A client on fd (taken, also on failure). */
int vfio_user_client_new(VfioUserServer *s, int fd, uid_t uid, pid_t pid, uint32_t serial,
                         VfioUserClient **ret) {
        VfioUserClient *cl;
        int r;

        cl = calloc(1, sizeof(*cl));
        if (!cl) {
                safe_close(fd);
                return -ENOMEM;
        }
        cl->server = s;
        cl->uid = uid;
        cl->pid = pid;
        cl->serial = serial;
        cl->out_fd = -EBADF;
        cl->dma = MAPPING_TABLE_INIT;
        r = sd_event_add_io(s->container->broker->event, &cl->source, fd, EPOLLIN, client_io, cl);
        if (r < 0) {
                safe_close(fd);
                free(cl);
                return r;
        }
        cl->fd = fd;
        s->client = cl;
        *ret = cl;
        return 0;
}
