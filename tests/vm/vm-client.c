/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vm-client.h"

int vm_failures;

void vm_tap(bool ok, const char *format, ...) {
        va_list ap;

        printf("VMTAP: %s - ", ok ? "ok" : "not ok");
        va_start(ap, format);
        vprintf(format, ap);
        va_end(ap);
        printf("\n");
        fflush(stdout);
        vm_failures += !ok;
}

const char *vm_call(sd_bus *bus, const char *path, const char *interface, const char *member,
                    sd_bus_message **reply, const char *types, ...) {
        static char name[512];
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        va_list ap;

        if (sd_bus_message_new_method_call(bus, &m, "org.vfiobroker.Broker1", path, interface, member) < 0)
                return "(cannot build)";
        if (types && *types) {
                va_start(ap, types);
                int r = sd_bus_message_appendv(m, types, ap);
                va_end(ap);
                if (r < 0)
                        return "(cannot append)";
        }
        if (sd_bus_call(bus, m, 30 * 1000000ULL, &error, reply) >= 0)
                return NULL;
        snprintf(name, sizeof(name), "%s: %s", error.name, error.message);
        fprintf(stderr, "VMLOG: %s failed: %s\n", member, name);
        sd_bus_error_free(&error);
        return name;
}

void vm_fill(int fd, uint64_t offset, uint8_t seed, size_t n) {
        uint8_t buf[4096];

        for (size_t i = 0; i < n; i++)
                buf[i] = (uint8_t) (seed + i * 7);
        if (pwrite(fd, buf, n, (off_t) offset) != (ssize_t) n)
                abort();
}

bool vm_check(int fd, uint64_t offset, uint8_t seed, size_t n) {
        uint8_t buf[4096];

        if (pread(fd, buf, n, (off_t) offset) != (ssize_t) n)
                return false;
        for (size_t i = 0; i < n; i++)
                if (buf[i] != (uint8_t) (seed + i * 7))
                        return false;
        return true;
}

bool vm_zero(int fd, uint64_t offset, size_t n) {
        uint8_t buf[4096];

        if (pread(fd, buf, n, (off_t) offset) != (ssize_t) n)
                return false;
        for (size_t i = 0; i < n; i++)
                if (buf[i])
                        return false;
        return true;
}
