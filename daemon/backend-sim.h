/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "backend.h"

/* What the sim backend holds pinned, summed over all containers: the figure the kernel would charge
 * to the daemon's locked_vm. For tests and diagnostics. */
uint64_t backend_sim_pinned_bytes(Backend *b);

/* Device fds of a group the VMM still holds (ends whose peer has not hung up). */
size_t backend_sim_open_device_fds(Backend *b, unsigned group);
