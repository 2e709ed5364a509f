/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* libFuzzer target: vfio-user message validation (vfio-user-message.c), everything a client controls
 * before the server acts. The input is a stream of messages as the server would receive them, each
 * preceded by one byte giving the number of fds that came with it. Whatever the bytes, parsing must not
 * crash or read out of bounds, and an accepted request must be self-consistent: what the server then
 * touches (payload-relative data, fd counts, sizes) lies inside what was received. */

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vfio-user-message.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_accepted(const VfioUserRequest *req, const uint8_t *payload, size_t payload_size) {
        assert(req->n_fds <= VFIO_USER_SERVER_MAX_MSG_FDS);
        switch (req->header.command) {
        case VFIO_USER_VERSION:
                assert(req->version.major == VFIO_USER_MAJOR);
                assert(req->n_fds == 0);
                break;
        case VFIO_USER_DMA_MAP:
                assert(req->n_fds <= 1);
                assert(req->dma_map.size > 0);
                assert(req->dma_map.address + (req->dma_map.size - 1) >= req->dma_map.address);
                assert(req->dma_map.flags != 0 && (req->dma_map.flags & ~UINT32_C(3)) == 0);
                break;
        case VFIO_USER_DMA_UNMAP:
                assert(req->n_fds == 0);
                assert((req->dma_unmap.flags & VFIO_USER_DMA_UNMAP_FLAG_ALL) || req->dma_unmap.size > 0);
                break;
        case VFIO_USER_DEVICE_SET_IRQS:
                if (req->irq_set.bools)
                        assert(req->irq_set.bools + req->irq_set.set.count <= payload + payload_size);
                if (req->n_fds > 0)
                        assert(req->n_fds == req->irq_set.set.count);
                break;
        case VFIO_USER_REGION_READ:
        case VFIO_USER_REGION_WRITE:
                assert(req->region.access.count > 0 &&
                       req->region.access.count <= VFIO_USER_SERVER_MAX_DATA_XFER_SIZE);
                if (req->region.data)
                        assert(req->region.data + req->region.access.count == payload + payload_size);
                break;
        case VFIO_USER_DEVICE_GET_INFO:
        case VFIO_USER_DEVICE_GET_REGION_INFO:
        case VFIO_USER_DEVICE_GET_IRQ_INFO:
        case VFIO_USER_DEVICE_RESET:
                assert(req->n_fds == 0);
                break;
        default:
                assert(!"a command the parser should have refused");
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        while (size > 1 + sizeof(VfioUserHeader)) {
                VfioUserProblem p = {};
                VfioUserRequest req;
                VfioUserHeader h;
                size_t n_fds = data[0] % 24, payload_size;
                uint8_t *payload;
                int r;

                memcpy(&h, data + 1, sizeof(h));
                data += 1 + sizeof(h);
                size -= 1 + sizeof(h);

                if (vfio_user_header_check(&h, &p) < 0) {
                        assert(p.fatal && p.reason[0]);
                        return 0; /* the server disconnects: nothing after counts */
                }
                payload_size = h.msg_size - sizeof(h);
                if (payload_size > size)
                        return 0; /* the rest never arrives */
                /* A copy of exactly the payload, so ASan sees any read past it. */
                payload = malloc(payload_size ? payload_size : 1);
                if (!payload)
                        return 0;
                memcpy(payload, data, payload_size);
                data += payload_size;
                size -= payload_size;

                r = vfio_user_request_parse(&h, payload, payload_size, n_fds, &req, &p);
                if (r < 0)
                        assert(p.reason[0]);
                else
                        check_accepted(&req, payload, payload_size);
                free(payload);
                if (r < 0 && p.fatal)
                        return 0;
        }
        free(vfio_user_version_reply_json(UINT64_C(0x40201000), 65535));
        return 0;
}
