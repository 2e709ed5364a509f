/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "log.h"
#include "peer-frame.h"
#include "peer-relay.h"


/* What is read from the client before it goes on: one chunk at a time. */
#define RELAY_BUFFER_SIZE (64u << 10)

typedef enum RelayState {
        RELAY_AUTH,       /* SASL lines, passed on up to and including BEGIN */
        RELAY_AUTH_BEGIN, /* BEGIN passed on; nothing more until sd-bus accepted it */
        RELAY_MESSAGES,   /* D-Bus messages, each checked from its header */
        RELAY_CLOSED,     /* violation or end: sd-bus's input has ended */
} RelayState;

struct PeerRelay {
        sd_bus *bus; /* not a reference: the peer owns both */
        const PeerRelayAccount *account;
        void *userdata;
        char *description;
        int client_fd;
        int bus_fd; /* the end of the socketpair we write; sd-bus reads the other */
        sd_event_source *client_source, *bus_source, *auth_source;
        RelayState state;

        /* RELAY_AUTH: bytes passed on so far, and where the SASL lines are. */
        size_t auth_size;
        PeerAuthScan auth;

        /* RELAY_MESSAGES: the message being relayed. */
        uint8_t header[PEER_FRAME_HEADER_SIZE];
        size_t header_size;
        uint64_t remaining; /* bytes of it still to read after the fixed header */
        uint64_t charged;   /* its declared size, when charged (above the buffer's size) */
        int fds[PEER_MESSAGE_FDS_MAX];
        unsigned n_fds;
        bool eof; /* the client is gone: end sd-bus's input once the buffer is out */

        /* Read, not yet passed on; `complete` when it ends the message (its fds go with it). */
        size_t start, end;
        bool complete;
        uint8_t buffer[RELAY_BUFFER_SIZE];
};

static void relay_release_bytes(PeerRelay *r) {
        if (r->charged > 0)
                r->account->release_bytes(r->userdata, r->charged);
        r->charged = 0;
}

static void relay_drop_fds(PeerRelay *r) {
        for (unsigned i = 0; i < r->n_fds; i++)
                safe_close(r->fds[i]);
        if (r->n_fds > 0)
                r->account->release_fds(r->userdata, r->n_fds);
        r->n_fds = 0;
}

/* Ends the connection: the client sees it shut down at once, sd-bus sees its input end (and so closes
 * the bus, which frees the peer and this relay). */
static void relay_close(PeerRelay *r, const char *reason) {
        if (r->state == RELAY_CLOSED)
                return;
        if (reason)
                log_warning("Closing peer connection of %s: %s", r->description, reason);
        r->state = RELAY_CLOSED;
        relay_drop_fds(r);
        relay_release_bytes(r);
        r->start = r->end = 0;
        (void) shutdown(r->client_fd, SHUT_RDWR);
        (void) sd_event_source_set_enabled(r->client_source, SD_EVENT_OFF);
        (void) sd_event_source_set_enabled(r->bus_source, SD_EVENT_OFF);
        (void) sd_event_source_set_enabled(r->auth_source, SD_EVENT_OFF);
        r->bus_fd = safe_close(r->bus_fd);
}

static void relay_closef(PeerRelay *r, const char *format, ...) _printf_(2, 3);
static void relay_closef(PeerRelay *r, const char *format, ...) {
        char reason[256];
        va_list ap;

        va_start(ap, format);
        (void) vsnprintf(reason, sizeof(reason), format, ap);
        va_end(ap);
        relay_close(r, reason);
}

/* Reads at most n bytes from the client; fds that come with them join the message's. Returns the
 * bytes read, 0 at EOF, -EAGAIN when there is nothing, or another -errno; on a violation, closes and
 * returns -EPROTO. */
static ssize_t relay_recv(PeerRelay *r, void *p, size_t n) {
        union {
                struct cmsghdr header;
                uint8_t buffer[CMSG_SPACE(sizeof(int) * PEER_MESSAGE_FDS_MAX)];
        } control;
        struct iovec iov = { .iov_base = p, .iov_len = n };
        struct msghdr mh = {
                .msg_iov = &iov,
                .msg_iovlen = 1,
                .msg_control = &control,
                .msg_controllen = sizeof(control),
        };
        unsigned n_received = 0, n_kept;
        char reason[192] = "";
        bool too_many = false;
        ssize_t k;

        k = recvmsg(r->client_fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (k < 0)
                return errno == EINTR ? -EAGAIN : -errno;

        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                        unsigned m = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                        int *fds = (int *) CMSG_DATA(c);

                        for (unsigned i = 0; i < m; i++) {
                                if (r->n_fds + n_received < PEER_MESSAGE_FDS_MAX)
                                        r->fds[r->n_fds + n_received++] = fds[i];
                                else {
                                        safe_close(fds[i]);
                                        too_many = true;
                                }
                        }
                }
        n_kept = n_received;
        if (too_many || (mh.msg_flags & MSG_CTRUNC))
                snprintf(reason, sizeof(reason), "a message carries more than %d fds.", PEER_MESSAGE_FDS_MAX);
        else if (n_received > 0 && r->state != RELAY_MESSAGES)
                snprintf(reason, sizeof(reason), "fds sent during authentication.");
        else if (n_received > 0 && r->account->charge_fds(r->userdata, n_received, reason, sizeof(reason)) < 0)
                n_kept = 0; /* refused: not charged */
        if (reason[0]) {
                for (unsigned i = 0; i < n_received; i++)
                        safe_close(r->fds[r->n_fds + i]);
                if (n_kept > 0)
                        r->account->release_fds(r->userdata, n_kept);
                relay_close(r, reason);
                return -EPROTO;
        }
        r->n_fds += n_received;
        return k;
}

/* Passes the buffer on, with the message's fds if it ends the message. 1 when all went, 0 when the
 * socketpair is full (the rest waits for it to drain), < 0 when sd-bus's end is gone. */
static int relay_flush(PeerRelay *r) {
        while (r->start < r->end) {
                union {
                        struct cmsghdr header;
                        uint8_t buffer[CMSG_SPACE(sizeof(int) * PEER_MESSAGE_FDS_MAX)];
                } control;
                struct iovec iov = { .iov_base = r->buffer + r->start, .iov_len = r->end - r->start };
                struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
                bool with_fds = r->complete && r->n_fds > 0;
                ssize_t k;

                if (with_fds) {
                        struct cmsghdr *c;

                        memset(&control, 0, sizeof(control));
                        mh.msg_control = &control;
                        mh.msg_controllen = CMSG_SPACE(sizeof(int) * r->n_fds);
                        c = CMSG_FIRSTHDR(&mh);
                        c->cmsg_level = SOL_SOCKET;
                        c->cmsg_type = SCM_RIGHTS;
                        c->cmsg_len = CMSG_LEN(sizeof(int) * r->n_fds);
                        memcpy(CMSG_DATA(c), r->fds, sizeof(int) * r->n_fds);
                }
                k = sendmsg(r->bus_fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
                if (k < 0) {
                        if (errno == EAGAIN || errno == EINTR)
                                return 0;
                        return -errno;
                }
                if (with_fds) {
                        /* The kernel holds them now, and sd-bus gets them with this message. */
                        relay_drop_fds(r);
                }
                r->start += (size_t) k;
        }
        r->start = r->end = 0;
        r->complete = false;
        return 1;
}

static void relay_wait_for_bus(PeerRelay *r, bool wait) {
        (void) sd_event_source_set_enabled(r->client_source, wait ? SD_EVENT_OFF : SD_EVENT_ON);
        (void) sd_event_source_set_enabled(r->bus_source, wait ? SD_EVENT_ON : SD_EVENT_OFF);
}

/* The end of what was read goes on; then, at the client's EOF, sd-bus's input ends too. 1 when done
 * and reading may go on, 0 when waiting for sd-bus to drain the socketpair. */
static int relay_pass_on(PeerRelay *r) {
        int k = relay_flush(r);

        if (k < 0) {
                relay_close(r, NULL); /* sd-bus's end closed: the peer is going away anyway */
                return 0;
        }
        if (k == 0) {
                relay_wait_for_bus(r, true);
                return 0;
        }
        relay_wait_for_bus(r, false);
        if (r->eof) {
                /* A message cut short: sd-bus sees EOF in its middle and closes as well. */
                relay_close(r, NULL);
                return 0;
        }
        return 1;
}

/* SASL: bytes go on as they come, up to the end of the BEGIN line (D-Bus specification,
 * "Authentication protocol": lines end in \r\n; the stream starts with one NUL byte). Peeking first
 * keeps what follows BEGIN (the first message, maybe with fds) in the socket. */
static void relay_read_auth(PeerRelay *r) {
        size_t n, take;
        ssize_t k;
        bool begin = false;

        if (r->auth_size >= PEER_AUTH_SIZE_MAX) {
                relay_closef(r, "authentication took more than %" PRIu32 " bytes.", PEER_AUTH_SIZE_MAX);
                return;
        }
        n = PEER_AUTH_SIZE_MAX - r->auth_size;
        if (n > sizeof(r->buffer))
                n = sizeof(r->buffer);
        k = recv(r->client_fd, r->buffer, n, MSG_DONTWAIT | MSG_PEEK);
        if (k < 0) {
                if (errno == EAGAIN || errno == EINTR)
                        return;
                relay_close(r, NULL);
                return;
        }
        if (k == 0) {
                relay_close(r, NULL);
                return;
        }

        take = peer_auth_scan(&r->auth, r->buffer, (size_t) k, &begin);

        k = relay_recv(r, r->buffer, take);
        if (k < 0) {
                if (k != -EPROTO)
                        relay_close(r, NULL);
                return;
        }
        assert((size_t) k == take); /* what we peeked is there */
        r->auth_size += take;
        r->start = 0;
        r->end = take;
        if (begin) {
                /* Nothing more until sd-bus has taken BEGIN: if it did not accept the authentication it
                 * still reads lines, and a message it would take for lines must not pass unchecked. */
                r->state = RELAY_AUTH_BEGIN;
                (void) sd_event_source_set_enabled(r->auth_source, SD_EVENT_ON);
        }
        if (relay_pass_on(r) > 0 && r->state == RELAY_AUTH_BEGIN)
                (void) sd_event_source_set_enabled(r->client_source, SD_EVENT_OFF);
}

static int relay_check_header(PeerRelay *r) {
        uint64_t size;

        if (peer_frame_size(r->header, &size) < 0) {
                relay_closef(r, "not a D-Bus message (endianness 0x%02x, version %u).", r->header[0],
                             r->header[3]);
                return -EPROTO;
        }
        if (size > PEER_MESSAGE_SIZE_MAX) {
                relay_closef(r, "it sent a message of %" PRIu64 " bytes; a peer connection may send at most %"
                             PRIu32 ".", size, PEER_MESSAGE_SIZE_MAX);
                return -EPROTO;
        }
        if (size > RELAY_BUFFER_SIZE) {
                char reason[192] = "";

                if (r->account->charge_bytes(r->userdata, size, reason, sizeof(reason)) < 0) {
                        relay_close(r, reason);
                        return -EPROTO;
                }
                r->charged = size;
        }
        r->remaining = size - PEER_FRAME_HEADER_SIZE;
        return 0;
}

/* One message, or one buffer of a large one, per call: other connections get their turn between. */
static void relay_read_message(PeerRelay *r) {
        for (;;) {
                size_t want;
                ssize_t k;

                if (r->header_size < PEER_FRAME_HEADER_SIZE)
                        want = PEER_FRAME_HEADER_SIZE - r->header_size;
                else {
                        want = sizeof(r->buffer) - r->end;
                        if (want > r->remaining)
                                want = (size_t) r->remaining;
                }

                if (want == 0 && r->end > 0) {
                        /* The buffer is full: it goes on, and the rest waits for the next dispatch. */
                        (void) relay_pass_on(r);
                        return;
                }

                k = relay_recv(r, r->buffer + r->end, want);
                if (k == -EAGAIN) {
                        /* What came so far goes on (its fds stay until the message's end), once the
                         * header is checked. */
                        if (r->end > 0 && r->header_size == PEER_FRAME_HEADER_SIZE)
                                (void) relay_pass_on(r);
                        return;
                }
                if (k == -EPROTO)
                        return;
                if (k <= 0) {
                        r->eof = true;
                        (void) relay_pass_on(r);
                        return;
                }

                if (r->header_size < PEER_FRAME_HEADER_SIZE) {
                        memcpy(r->header + r->header_size, r->buffer + r->end, (size_t) k);
                        r->header_size += (size_t) k;
                        r->end += (size_t) k;
                        if (r->header_size < PEER_FRAME_HEADER_SIZE)
                                continue;
                        if (relay_check_header(r) < 0)
                                return;
                } else {
                        r->end += (size_t) k;
                        r->remaining -= (uint64_t) k;
                }

                if (r->header_size == PEER_FRAME_HEADER_SIZE && r->remaining == 0) {
                        /* The whole message: it goes on with its fds, and the next starts afresh. */
                        r->complete = true;
                        r->header_size = 0;
                        relay_release_bytes(r);
                        if (relay_pass_on(r) > 0) {
                                /* sd-bus can take it now, in this dispatch rather than after another
                                 * turn of the event loop: the relay's cost on every call is a few
                                 * syscalls, not a loop iteration too. This may free the relay (a
                                 * handler closing the peer): r is not touched after. */
                                sd_bus *bus = r->bus;
                                (void) sd_bus_process(bus, NULL);
                        }
                        return;
                }
        }
}

static int on_client(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        PeerRelay *r = userdata;

        if (r->state == RELAY_AUTH)
                relay_read_auth(r);
        else if (r->state == RELAY_MESSAGES)
                relay_read_message(r);
        return 0;
}

static int on_bus_writable(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        PeerRelay *r = userdata;

        if (relay_pass_on(r) > 0 && r->state == RELAY_AUTH_BEGIN)
                (void) sd_event_source_set_enabled(r->client_source, SD_EVENT_OFF);
        return 0;
}

/* After every dispatch while BEGIN is with sd-bus: has it started running? */
static int on_auth_post(sd_event_source *s, void *userdata) {
        PeerRelay *r = userdata;

        if (r->state != RELAY_AUTH_BEGIN || r->end > 0 || sd_bus_is_ready(r->bus) <= 0)
                return 0;
        r->state = RELAY_MESSAGES;
        (void) sd_event_source_set_enabled(s, SD_EVENT_OFF);
        (void) sd_event_source_set_enabled(r->client_source, SD_EVENT_ON);
        return 0;
}

int peer_relay_new(sd_event *event, sd_bus *bus, int client_fd, const PeerRelayAccount *account, void *userdata,
                   const char *description, PeerRelay **ret, int *ret_bus_input, int *ret_bus_output) {
        _cleanup_close_ int client = client_fd, input = -EBADF, output = -EBADF;
        PeerRelay *r;
        int pair[2], k;

        assert(event && bus && account && ret && ret_bus_input && ret_bus_output);

        r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        r->bus = bus;
        r->account = account;
        r->userdata = userdata;
        r->client_fd = r->bus_fd = -EBADF;
        r->description = strdup(description);
        if (!r->description) {
                peer_relay_free(r);
                return -ENOMEM;
        }

        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, pair) < 0) {
                k = -errno;
                peer_relay_free(r);
                return k;
        }
        input = pair[0];
        r->bus_fd = pair[1];
        /* sd-bus writes to the client itself; it needs an fd of its own for that, since one epoll set
         * (sd-event's) takes each fd once and the relay reads this one. */
        output = fcntl(client, F_DUPFD_CLOEXEC, 3);
        if (output < 0) {
                k = -errno;
                peer_relay_free(r);
                return k;
        }
        r->client_fd = TAKE_FD(client);

        k = sd_event_add_io(event, &r->client_source, r->client_fd, EPOLLIN, on_client, r);
        if (k >= 0)
                k = sd_event_add_io(event, &r->bus_source, r->bus_fd, EPOLLOUT, on_bus_writable, r);
        if (k >= 0)
                k = sd_event_source_set_enabled(r->bus_source, SD_EVENT_OFF);
        if (k >= 0)
                k = sd_event_add_post(event, &r->auth_source, on_auth_post, r);
        if (k >= 0)
                k = sd_event_source_set_enabled(r->auth_source, SD_EVENT_OFF);
        if (k < 0) {
                peer_relay_free(r);
                return k;
        }

        *ret_bus_input = TAKE_FD(input);
        *ret_bus_output = TAKE_FD(output);
        *ret = r;
        return 0;
}

PeerRelay *peer_relay_free(PeerRelay *r) {
        if (!r)
                return NULL;
        relay_drop_fds(r);
        relay_release_bytes(r);
        sd_event_source_disable_unref(r->client_source);
        sd_event_source_disable_unref(r->bus_source);
        sd_event_source_disable_unref(r->auth_source);
        safe_close(r->client_fd);
        safe_close(r->bus_fd);
        free(r->description);
        free(r);
        return NULL;
}
