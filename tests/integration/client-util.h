/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Small sd-bus helpers for the integration tests (and the VM tests, which run the same contract
 * against the real kernel). Failures abort the test through cmocka's assertions. */

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-bus.h>

#include "broker-wire.h"

/* The wire contract, from common/broker-wire.h (tests/integration/test-introspection.py holds the
 * daemon's objects to the XML independently of it). */
#define BUS_NAME BROKER_BUS_NAME
#define ROOT_PATH BROKER_OBJECT_PATH
#define MANAGER_IFACE BROKER_MANAGER_INTERFACE
#define GROUP_IFACE BROKER_GROUP_INTERFACE
#define CONTAINER_IFACE BROKER_CONTAINER_INTERFACE

sd_bus *test_bus_open(void);

/* Calls a method; returns 0 or the error name (static storage, valid until the next call). reply is
 * optional. types/args as sd_bus_message_append. */
const char *test_call(sd_bus *bus, const char *path, const char *interface, const char *member,
                      sd_bus_message **reply, const char *types, ...);

#define test_call_ok(bus, path, iface, member, reply, ...)                                   \
        do {                                                                                 \
                const char *_e = test_call(bus, path, iface, member, reply, __VA_ARGS__);   \
                if (_e)                                                                      \
                        fail_msg("%s.%s failed: %s", iface, member, _e);                     \
        } while (0)

char *test_create_container(sd_bus *bus, const char *label);

uint32_t test_get_u32(sd_bus *bus, const char *path, const char *iface, const char *prop);
uint64_t test_get_u64(sd_bus *bus, const char *path, const char *iface, const char *prop);
bool test_get_bool(sd_bus *bus, const char *path, const char *iface, const char *prop);
char *test_get_string(sd_bus *bus, const char *path, const char *iface, const char *prop, char type);
/* Reads an "au" property into a static buffer; returns the count. */
size_t test_get_au(sd_bus *bus, const char *path, const char *iface, const char *prop, uint32_t *out, size_t max);

bool test_object_exists(sd_bus *bus, const char *path);

/* A memfd of size bytes. */
int test_memfd(uint64_t size);

/* Group discovery: free viable groups and a non-viable one, from the Group objects. */
typedef struct TestGroup {
        uint32_t id;
        char device[64];
        bool viable;
        bool free;
} TestGroup;
size_t test_list_groups(sd_bus *bus, TestGroup *out, size_t max);

/* Records which properties changed on which path. */
typedef struct ChangeLog {
        char entries[64][160]; /* "path interface.property" */
        size_t n;
} ChangeLog;
int test_watch_changes(sd_bus *bus, ChangeLog *log, sd_bus_slot **slot);
/* Processes the bus until "path iface.prop" was seen, or 5 s passed. */
bool test_wait_change(sd_bus *bus, ChangeLog *log, const char *path, const char *iface, const char *prop);

/* Asks the test harness (harness.py: restart the daemon, inspect the stand-in fd store, ...) and
 * returns its one-line answer (static). */
const char *test_harness(const char *cmd);
