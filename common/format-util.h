/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* "512 B", "8.0 MiB", "4.0 GiB": for people (vfio-brokerctl's tables, the daemon's STATUS=). Returns buf. */
char *format_bytes(uint64_t bytes, char *buf, size_t size);
