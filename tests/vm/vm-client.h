/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Helpers of the in-VM test clients: TAP lines for the host, broker calls, memfd patterns. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-bus.h>

#include "macro.h"

extern int vm_failures;

/* "VMTAP: ok - ..." / "VMTAP: not ok - ...", counted in vm_failures. */
void vm_tap(bool ok, const char *format, ...) _printf_(2, 3);

/* Calls a broker method; NULL on success, else "Name: message" (static storage), also logged. */
const char *vm_call(sd_bus *bus, const char *path, const char *interface, const char *member,
                    sd_bus_message **reply, const char *types, ...);

/* A recognizable pattern at [offset, offset+n) of a memfd (n <= 4096), and checks for it. */
void vm_fill(int fd, uint64_t offset, uint8_t seed, size_t n);
bool vm_check(int fd, uint64_t offset, uint8_t seed, size_t n);
bool vm_zero(int fd, uint64_t offset, size_t n);

/* A new container's object path (malloc'd), or NULL. */
char *vm_create_container(sd_bus *bus, const char *label);
/* OpenDevice; returns the caller's own copy of the device fd, or -1. */
int vm_open_device(sd_bus *bus, const char *path, const char *device);
/* The VFIO groups (every /dev/vfio/N, sorted) with the first device of each. */
int vm_find_groups(unsigned *ids, char devices[][32], int max);
/* DMAR fault lines in the kernel log so far. */
unsigned vm_dmar_faults(void);
/* The daemon's locked + pinned memory (VmLck + VmPin of $VFIO_BROKER_DAEMON_PID), -1 if unknown. */
long vm_daemon_locked_kib(void);

/* A command to the fd-store supervisor ($VFIO_BROKER_HARNESS, else /run/sup): its answer (static). */
const char *vm_harness(const char *cmd);

/* Pages held with FOLL_PIN right now, system-wide (type1 pins with pin_user_pages). */
long vm_pinned_pages(void);
