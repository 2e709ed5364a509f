/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <json-c/json.h>

#include "macro.h"
#include "vfio-user-message.h"

static inline void json_tokener_freep(json_tokener **t) {
        if (*t)
                json_tokener_free(*t);
}

static int problem(VfioUserProblem *p, bool fatal, int error, const char *format, ...) _printf_(4, 5);

static int problem(VfioUserProblem *p, bool fatal, int error, const char *format, ...) {
        va_list ap;

        if (p) {
                p->fatal = fatal;
                va_start(ap, format);
                (void) vsnprintf(p->reason, sizeof(p->reason), format, ap);
                va_end(ap);
        }
        return -error;
}

#define malformed(p, ...) problem(p, true, EBADMSG, __VA_ARGS__)
#define refused(p, error, ...) problem(p, false, error, __VA_ARGS__)

const char *vfio_user_command_name(uint16_t command) {
        static const char *const names[] = {
                [VFIO_USER_VERSION] = "VERSION",
                [VFIO_USER_DMA_MAP] = "DMA_MAP",
                [VFIO_USER_DMA_UNMAP] = "DMA_UNMAP",
                [VFIO_USER_DEVICE_GET_INFO] = "DEVICE_GET_INFO",
                [VFIO_USER_DEVICE_GET_REGION_INFO] = "DEVICE_GET_REGION_INFO",
                [VFIO_USER_DEVICE_GET_REGION_IO_FDS] = "DEVICE_GET_REGION_IO_FDS",
                [VFIO_USER_DEVICE_GET_IRQ_INFO] = "DEVICE_GET_IRQ_INFO",
                [VFIO_USER_DEVICE_SET_IRQS] = "DEVICE_SET_IRQS",
                [VFIO_USER_REGION_READ] = "REGION_READ",
                [VFIO_USER_REGION_WRITE] = "REGION_WRITE",
                [VFIO_USER_DMA_READ] = "DMA_READ",
                [VFIO_USER_DMA_WRITE] = "DMA_WRITE",
                [VFIO_USER_DEVICE_RESET] = "DEVICE_RESET",
                [VFIO_USER_REGION_WRITE_MULTI] = "REGION_WRITE_MULTI",
                [VFIO_USER_DEVICE_FEATURE] = "DEVICE_FEATURE",
                [VFIO_USER_MIG_DATA_READ] = "MIG_DATA_READ",
                [VFIO_USER_MIG_DATA_WRITE] = "MIG_DATA_WRITE",
        };

        if (command < ELEMENTSOF(names) && names[command])
                return names[command];
        return "unknown";
}

int vfio_user_header_check(const VfioUserHeader *h, VfioUserProblem *p) {
        uint32_t type = h->flags & VFIO_USER_FLAGS_TYPE_MASK;

        if (h->msg_size < sizeof(VfioUserHeader))
                return malformed(p, "message %" PRIu16 " claims %" PRIu32 " bytes, less than the 16-byte header",
                                 h->msg_id, h->msg_size);
        if (h->msg_size > VFIO_USER_SERVER_MAX_MSG_SIZE)
                return malformed(p, "message %" PRIu16 " (%s) claims %" PRIu32 " bytes, more than the %" PRIu32
                                 " the broker accepts", h->msg_id, vfio_user_command_name(h->command),
                                 h->msg_size, VFIO_USER_SERVER_MAX_MSG_SIZE);
        if (type != VFIO_USER_FLAGS_TYPE_COMMAND)
                /* The broker sends no commands (no DMA_READ/WRITE, no twin socket), so no reply is due to it. */
                return malformed(p, "message %" PRIu16 " has type %" PRIu32 "; the broker only takes commands",
                                 h->msg_id, type);
        if (h->flags & ~(VFIO_USER_FLAGS_TYPE_MASK | VFIO_USER_FLAGS_NO_REPLY))
                return malformed(p, "message %" PRIu16 " has unknown or reply-only flags 0x%" PRIx32, h->msg_id,
                                 h->flags);
        return 0;
}

static int json_get_u64(json_object *o, const char *key, uint64_t min, uint64_t max, uint64_t *v,
                        VfioUserProblem *p) {
        json_object *x;
        int64_t n;

        if (!json_object_object_get_ex(o, key, &x))
                return 0;
        if (!json_object_is_type(x, json_type_int))
                return malformed(p, "VERSION capability %s is not an integer", key);
        /* json-c keeps integers as int64 or uint64; values beyond int64 come back as INT64_MAX. */
        if (json_object_get_int64(x) < 0)
                return malformed(p, "VERSION capability %s is negative", key);
        n = json_object_get_int64(x);
        if ((uint64_t) n == (uint64_t) INT64_MAX)
                *v = json_object_get_uint64(x);
        else
                *v = (uint64_t) n;
        if (*v < min || *v > max)
                return malformed(p, "VERSION capability %s = %" PRIu64 " is outside [%" PRIu64 ", %" PRIu64 "]",
                                 key, *v, min, max);
        return 0;
}

static int parse_capabilities(const uint8_t *data, size_t size, VfioUserCapabilities *caps, VfioUserProblem *p) {
        _cleanup_(json_tokener_freep) json_tokener *tok = NULL;
        json_object *root, *o, *x;
        uint64_t v;
        int r;

        if (size > VFIO_USER_SERVER_MAX_VERSION_DATA)
                return malformed(p, "VERSION data of %zu bytes is larger than %d", size,
                                 VFIO_USER_SERVER_MAX_VERSION_DATA);
        if (data[size - 1] != 0)
                return malformed(p, "VERSION data is not NUL-terminated");
        if (strlen((const char *) data) != size - 1)
                return malformed(p, "VERSION data has a NUL inside the JSON");

        tok = json_tokener_new_ex(16);
        if (!tok)
                return -ENOMEM;
        root = json_tokener_parse_ex(tok, (const char *) data, (int) (size - 1));
        if (!root || json_tokener_get_error(tok) != json_tokener_success ||
            json_tokener_get_parse_end(tok) != size - 1) {
                json_object_put(root);
                return malformed(p, "VERSION data is not valid JSON");
        }
        if (!json_object_is_type(root, json_type_object)) {
                json_object_put(root);
                return malformed(p, "VERSION data is not a JSON object");
        }

        r = 0;
        if (json_object_object_get_ex(root, "capabilities", &o)) {
                if (!json_object_is_type(o, json_type_object)) {
                        r = malformed(p, "VERSION capabilities is not a JSON object");
                        goto finish;
                }
                v = caps->max_msg_fds;
                if ((r = json_get_u64(o, "max_msg_fds", 0, UINT16_MAX, &v, p)) < 0)
                        goto finish;
                caps->max_msg_fds = (uint32_t) v;
                if ((r = json_get_u64(o, "max_data_xfer_size", 1, UINT32_MAX, &caps->max_data_xfer_size, p)) < 0)
                        goto finish;
                if ((r = json_get_u64(o, "pgsizes", 1, UINT64_MAX, &caps->pgsizes, p)) < 0)
                        goto finish;
                v = caps->max_dma_maps;
                if ((r = json_get_u64(o, "max_dma_maps", 1, UINT32_MAX, &v, p)) < 0)
                        goto finish;
                caps->max_dma_maps = (uint32_t) v;
                if (json_object_object_get_ex(o, "twin_socket", &x)) {
                        json_object *s;
                        if (!json_object_is_type(x, json_type_object)) {
                                r = malformed(p, "VERSION capability twin_socket is not a JSON object");
                                goto finish;
                        }
                        if (json_object_object_get_ex(x, "supported", &s))
                                caps->twin_socket = json_object_get_boolean(s);
                }
                if (json_object_object_get_ex(o, "write_multiple", &x)) {
                        if (!json_object_is_type(x, json_type_boolean)) {
                                r = malformed(p, "VERSION capability write_multiple is not a boolean");
                                goto finish;
                        }
                        caps->write_multiple = json_object_get_boolean(x);
                }
                /* "migration" and capabilities of later minor versions are the client's to offer and the
                 * broker's to leave out of its reply. */
        }
finish:
        json_object_put(root);
        return r;
}

static int parse_version(const uint8_t *payload, size_t size, size_t n_fds, VfioUserRequest *ret, VfioUserProblem *p) {
        VfioUserVersion v;

        if (size < sizeof(v))
                return malformed(p, "VERSION payload of %zu bytes is shorter than major and minor", size);
        if (n_fds > 0)
                return malformed(p, "VERSION carries %zu fds; it takes none", n_fds);
        memcpy(&v, payload, sizeof(v));
        if (v.major != VFIO_USER_MAJOR)
                /* The protocol: a server that cannot speak the proposed major closes the connection. */
                return malformed(p, "client speaks vfio-user %" PRIu16 ".%" PRIu16 "; the broker speaks %d.%d",
                                 v.major, v.minor, VFIO_USER_MAJOR, VFIO_USER_MINOR);

        ret->version.major = v.major;
        ret->version.minor = v.minor;
        ret->version.capabilities = (VfioUserCapabilities) {
                .max_msg_fds = VFIO_USER_DEFAULT_MAX_MSG_FDS,
                .max_data_xfer_size = VFIO_USER_DEFAULT_MAX_DATA_XFER_SIZE,
                .pgsizes = VFIO_USER_DEFAULT_PGSIZES,
                .max_dma_maps = VFIO_USER_DEFAULT_MAX_DMA_MAPS,
        };
        if (size == sizeof(v))
                return 0;
        return parse_capabilities(payload + sizeof(v), size - sizeof(v), &ret->version.capabilities, p);
}

/* A fixed-size payload whose first field is argsz, the largest reply the client takes (at least
 * the fixed reply: anything less is a client that cannot read the answer it asked for). */
static int parse_fixed(uint16_t command, const uint8_t *payload, size_t size, size_t expected, uint32_t min_argsz,
                       size_t n_fds, void *ret, VfioUserProblem *p) {
        uint32_t argsz;

        if (size != expected)
                return malformed(p, "%s payload is %zu bytes, not %zu", vfio_user_command_name(command), size,
                                 expected);
        if (n_fds > 0)
                return malformed(p, "%s carries %zu fds; it takes none", vfio_user_command_name(command), n_fds);
        memcpy(ret, payload, expected);
        memcpy(&argsz, payload, sizeof(argsz));
        if (argsz < min_argsz)
                return malformed(p, "%s argsz %" PRIu32 " is less than the %" PRIu32 " bytes of its reply",
                                 vfio_user_command_name(command), argsz, min_argsz);
        return 0;
}

static int parse_dma_map(const uint8_t *payload, size_t size, size_t n_fds, VfioUserDmaMap *m, VfioUserProblem *p) {
        if (size != sizeof(*m))
                return malformed(p, "DMA_MAP payload is %zu bytes, not %zu", size, sizeof(*m));
        memcpy(m, payload, sizeof(*m));
        if (m->argsz != sizeof(*m))
                return malformed(p, "DMA_MAP argsz %" PRIu32 " is not the structure's %zu bytes", m->argsz,
                                 sizeof(*m));
        if (n_fds > 1)
                return malformed(p, "DMA_MAP carries %zu fds; it takes one or none", n_fds);
        if (m->flags == 0 || (m->flags & ~(VFIO_USER_DMA_MAP_FLAG_READ | VFIO_USER_DMA_MAP_FLAG_WRITE)))
                return refused(p, EINVAL, "DMA_MAP flags 0x%" PRIx32 " are not a non-empty subset of READ|WRITE",
                               m->flags);
        if (m->size == 0)
                return refused(p, EINVAL, "DMA_MAP of 0 bytes");
        if (m->address + (m->size - 1) < m->address)
                return refused(p, EINVAL, "DMA_MAP range 0x%" PRIx64 "+0x%" PRIx64 " wraps around", m->address,
                               m->size);
        return 0;
}

static int parse_dma_unmap(const uint8_t *payload, size_t size, size_t n_fds, VfioUserDmaUnmap *u,
                           VfioUserProblem *p) {
        int r;

        r = parse_fixed(VFIO_USER_DMA_UNMAP, payload, size, sizeof(*u), sizeof(*u), n_fds, u, p);
        if (r < 0)
                return r;
        if (u->flags & VFIO_USER_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP)
                return refused(p, EOPNOTSUPP, "DMA_UNMAP with a dirty bitmap is not supported");
        if (u->flags & ~VFIO_USER_DMA_UNMAP_FLAG_ALL)
                return refused(p, EINVAL, "DMA_UNMAP flags 0x%" PRIx32 " are unknown", u->flags);
        if (u->flags & VFIO_USER_DMA_UNMAP_FLAG_ALL) {
                /* As the kernel's VFIO_DMA_UNMAP_FLAG_ALL: the range must be empty. */
                if (u->address != 0 || u->size != 0)
                        return refused(p, EINVAL, "DMA_UNMAP of all mappings with a range");
                return 0;
        }
        if (u->size == 0)
                return refused(p, EINVAL, "DMA_UNMAP of 0 bytes");
        if (u->address + (u->size - 1) < u->address)
                return refused(p, EINVAL, "DMA_UNMAP range wraps around");
        return 0;
}

static int parse_set_irqs(const uint8_t *payload, size_t size, size_t n_fds, VfioUserRequest *ret,
                          VfioUserProblem *p) {
        VfioUserIrqSet *s = &ret->irq_set.set;
        uint32_t data, action;
        size_t expected;

        if (size < sizeof(*s))
                return malformed(p, "DEVICE_SET_IRQS payload of %zu bytes is shorter than %zu", size, sizeof(*s));
        memcpy(s, payload, sizeof(*s));
        if (s->argsz != size)
                return malformed(p, "DEVICE_SET_IRQS argsz %" PRIu32 " is not the payload's %zu bytes", s->argsz,
                                 size);
        data = s->flags & VFIO_USER_IRQ_SET_DATA_MASK;
        action = s->flags & VFIO_USER_IRQ_SET_ACTION_MASK_ALL;
        expected = sizeof(*s) + (data == VFIO_USER_IRQ_SET_DATA_BOOL ? (size_t) s->count : 0);
        if (size != expected)
                return malformed(p, "DEVICE_SET_IRQS payload is %zu bytes, its flags and count say %zu", size,
                                 expected);
        if (data == VFIO_USER_IRQ_SET_DATA_EVENTFD) {
                /* QEMU sends either all the eventfds of the range or none (which de-assigns them). */
                if (n_fds != 0 && n_fds != s->count)
                        return malformed(p, "DEVICE_SET_IRQS carries %zu eventfds for %" PRIu32 " interrupts",
                                         n_fds, s->count);
        } else if (n_fds > 0)
                return malformed(p, "DEVICE_SET_IRQS without DATA_EVENTFD carries %zu fds", n_fds);

        if ((s->flags & ~(VFIO_USER_IRQ_SET_DATA_MASK | VFIO_USER_IRQ_SET_ACTION_MASK_ALL)) ||
            __builtin_popcount(data) != 1 || __builtin_popcount(action) != 1)
                return refused(p, EINVAL, "DEVICE_SET_IRQS flags 0x%" PRIx32 " need exactly one DATA and one "
                               "ACTION bit", s->flags);
        if (s->start + (uint64_t) s->count > UINT32_MAX)
                return refused(p, EINVAL, "DEVICE_SET_IRQS range wraps around");
        if (s->count == 0 && !(data == VFIO_USER_IRQ_SET_DATA_NONE && action == VFIO_USER_IRQ_SET_ACTION_TRIGGER))
                return refused(p, EINVAL, "DEVICE_SET_IRQS with count 0 is only the DATA_NONE|TRIGGER disable");
        ret->irq_set.bools = data == VFIO_USER_IRQ_SET_DATA_BOOL ? payload + sizeof(*s) : NULL;
        return 0;
}

static int parse_region_access(uint16_t command, const uint8_t *payload, size_t size, size_t n_fds,
                               VfioUserRequest *ret, VfioUserProblem *p) {
        VfioUserRegionAccess *a = &ret->region.access;
        bool write = command == VFIO_USER_REGION_WRITE;

        if (size < sizeof(*a))
                return malformed(p, "%s payload of %zu bytes is shorter than %zu", vfio_user_command_name(command),
                                 size, sizeof(*a));
        memcpy(a, payload, sizeof(*a));
        if (size != sizeof(*a) + (write ? (size_t) a->count : 0))
                return malformed(p, "%s payload is %zu bytes for a count of %" PRIu32,
                                 vfio_user_command_name(command), size, a->count);
        if (n_fds > 0)
                return malformed(p, "%s carries %zu fds; it takes none", vfio_user_command_name(command), n_fds);
        if (a->count == 0 || a->count > VFIO_USER_SERVER_MAX_DATA_XFER_SIZE)
                return refused(p, EINVAL, "%s count %" PRIu32 " is not in [1, %" PRIu64 "]",
                               vfio_user_command_name(command), a->count, VFIO_USER_SERVER_MAX_DATA_XFER_SIZE);
        if (a->offset + a->count < a->offset)
                return refused(p, EINVAL, "%s range wraps around", vfio_user_command_name(command));
        ret->region.data = write ? payload + sizeof(*a) : NULL;
        return 0;
}

int vfio_user_request_parse(const VfioUserHeader *h, const uint8_t *payload, size_t payload_size, size_t n_fds,
                            VfioUserRequest *ret, VfioUserProblem *p) {
        int r;

        r = vfio_user_header_check(h, p);
        if (r < 0)
                return r;
        if (payload_size != h->msg_size - sizeof(VfioUserHeader))
                return malformed(p, "message %" PRIu16 " holds %zu payload bytes, its header says %zu", h->msg_id,
                                 payload_size, (size_t) (h->msg_size - sizeof(VfioUserHeader)));
        if (n_fds > VFIO_USER_SERVER_MAX_MSG_FDS)
                return malformed(p, "message %" PRIu16 " carries %zu fds, more than the %d the broker accepts",
                                 h->msg_id, n_fds, VFIO_USER_SERVER_MAX_MSG_FDS);

        *ret = (VfioUserRequest) { .header = *h, .n_fds = n_fds };

        switch (h->command) {
        case VFIO_USER_VERSION:
                return parse_version(payload, payload_size, n_fds, ret, p);
        case VFIO_USER_DMA_MAP:
                return parse_dma_map(payload, payload_size, n_fds, &ret->dma_map, p);
        case VFIO_USER_DMA_UNMAP:
                return parse_dma_unmap(payload, payload_size, n_fds, &ret->dma_unmap, p);
        case VFIO_USER_DEVICE_GET_INFO:
                return parse_fixed(h->command, payload, payload_size, sizeof(VfioUserDeviceInfo),
                                   sizeof(VfioUserDeviceInfo), n_fds, &ret->device_info, p);
        case VFIO_USER_DEVICE_GET_REGION_INFO:
                return parse_fixed(h->command, payload, payload_size, sizeof(VfioUserRegionInfo),
                                   sizeof(VfioUserRegionInfo), n_fds, &ret->region_info, p);
        case VFIO_USER_DEVICE_GET_IRQ_INFO:
                return parse_fixed(h->command, payload, payload_size, sizeof(VfioUserIrqInfo),
                                   sizeof(VfioUserIrqInfo), n_fds, &ret->irq_info, p);
        case VFIO_USER_DEVICE_SET_IRQS:
                return parse_set_irqs(payload, payload_size, n_fds, ret, p);
        case VFIO_USER_REGION_READ:
        case VFIO_USER_REGION_WRITE:
                return parse_region_access(h->command, payload, payload_size, n_fds, ret, p);
        case VFIO_USER_DEVICE_RESET:
                if (payload_size != 0 || n_fds != 0)
                        return malformed(p, "DEVICE_RESET carries %zu bytes and %zu fds; it takes none",
                                         payload_size, n_fds);
                return 0;
        case VFIO_USER_DMA_READ:
        case VFIO_USER_DMA_WRITE:
                return malformed(p, "%s is a server-to-client command", vfio_user_command_name(h->command));
        default:
                /* Well framed but not served (REGION_IO_FDS, WRITE_MULTI which the broker does not announce,
                 * migration, commands of later versions): the client hears so and may carry on. */
                return refused(p, EOPNOTSUPP, "command %" PRIu16 " (%s) is not supported", h->command,
                               vfio_user_command_name(h->command));
        }
}

char *vfio_user_version_reply_json(uint64_t pgsizes, uint32_t max_dma_maps) {
        json_object *root, *caps;
        char *s = NULL;

        root = json_object_new_object();
        caps = json_object_new_object();
        if (!root || !caps)
                goto finish;
        if (json_object_object_add(root, "capabilities", caps) < 0) {
                json_object_put(caps);
                goto finish;
        }
        if (json_object_object_add(caps, "max_msg_fds", json_object_new_int64(VFIO_USER_SERVER_MAX_MSG_FDS)) < 0 ||
            json_object_object_add(caps, "max_data_xfer_size",
                                   json_object_new_int64((int64_t) VFIO_USER_SERVER_MAX_DATA_XFER_SIZE)) < 0 ||
            json_object_object_add(caps, "pgsizes", json_object_new_uint64(pgsizes)) < 0 ||
            json_object_object_add(caps, "max_dma_maps", json_object_new_int64(max_dma_maps)) < 0)
                goto finish;
        s = strdup(json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN));
finish:
        json_object_put(root);
        return s;
}
