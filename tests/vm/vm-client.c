/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
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

char *vm_create_container(sd_bus *bus, const char *label) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *p;

        if (vm_call(bus, "/org/vfiobroker/Broker1", "org.vfiobroker.Broker1.Manager", "CreateContainer", &reply,
                    "a{sv}", 1, "Label", "s", label) ||
            sd_bus_message_read(reply, "o", &p) < 0)
                return NULL;
        return strdup(p);
}

int vm_open_device(sd_bus *bus, const char *path, const char *device) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int fd;

        if (vm_call(bus, path, "org.vfiobroker.Broker1.Container", "OpenDevice", &reply, "s", device) ||
            sd_bus_message_read(reply, "h", &fd) < 0)
                return -1;
        /* The message owns its fd. RLIMIT_NOFILE is low in the VM: take the lowest free number. */
        return fcntl(fd, F_DUPFD_CLOEXEC, 3);
}

int vm_find_groups(unsigned *ids, char devices[][32], int max) {
        int n = 0;
        char line[512];
        FILE *f = popen("for g in $(ls /dev/vfio | grep -v vfio | sort -n); do echo $g $(ls /sys/kernel/iommu_groups/$g/devices); done", "r");

        if (!f)
                return 0;
        /* One line per group; a group of several devices (the multi-function edu) lists them all. */
        while (n < max && fgets(line, sizeof(line), f))
                if (sscanf(line, "%u %31s", &ids[n], devices[n]) == 2)
                        n++;
        pclose(f);
        return n;
}

unsigned vm_dmar_faults(void) {
        unsigned n = 0;
        char line[512];
        FILE *f;

        /* The fault interrupt of the remapping unit (dmar_fault(), "DMAR-MSI") counts every fault;
         * its messages in dmesg are rate limited (10 per 5 s: "dmar_fault: N callbacks suppressed"),
         * so a run fast enough loses faults there. dmesg only where the interrupt is not listed. */
        f = fopen("/proc/interrupts", "re");
        if (f) {
                bool found = false;
                while (fgets(line, sizeof(line), f)) {
                        char *p = strchr(line, ':');
                        if (!p || !strstr(line, "DMAR-MSI"))
                                continue;
                        found = true;
                        for (p++;;) {
                                char *end;
                                unsigned long v = strtoul(p, &end, 10);
                                if (end == p)
                                        break;
                                n += (unsigned) v;
                                p = end;
                        }
                }
                fclose(f);
                if (found)
                        return n;
        }

        f = popen("dmesg", "r");
        if (!f)
                return 0;
        while (fgets(line, sizeof(line), f))
                if (strstr(line, "DMAR") && (strstr(line, "fault") || strstr(line, "Fault")))
                        n++;
        pclose(f);
        return n;
}

long vm_daemon_locked_kib(void) {
        char path[64], line[256];
        long vmlck = -1, vmpin = 0;
        const char *pid = getenv("VFIO_BROKER_DAEMON_PID");
        FILE *f;

        if (!pid)
                return -1;
        snprintf(path, sizeof(path), "/proc/%s/status", pid);
        f = fopen(path, "re");
        if (!f)
                return -1;
        while (fgets(line, sizeof(line), f)) {
                sscanf(line, "VmLck: %ld kB", &vmlck);
                sscanf(line, "VmPin: %ld kB", &vmpin);
        }
        fclose(f);
        return vmlck < 0 ? -1 : vmlck + vmpin;
}

const char *vm_harness(const char *cmd) {
        static char answer[256];
        char path[512];
        const char *dir = getenv("VFIO_BROKER_HARNESS") ?: "/run/sup";
        FILE *f;

        snprintf(path, sizeof(path), "%s/cmd", dir);
        if (!(f = fopen(path, "we")))
                return "no harness";
        fprintf(f, "%s\n", cmd);
        fclose(f);
        snprintf(path, sizeof(path), "%s/ack", dir);
        if (!(f = fopen(path, "re")))
                return "no harness";
        if (!fgets(answer, sizeof(answer), f))
                answer[0] = 0;
        fclose(f);
        answer[strcspn(answer, "\n")] = 0;
        return answer;
}

long vm_pinned_pages(void) {
        char line[128];
        long acquired = -1, released = -1, v;
        FILE *f = fopen("/proc/vmstat", "re");

        if (!f)
                return -1;
        while (fgets(line, sizeof(line), f)) {
                if (sscanf(line, "nr_foll_pin_acquired %ld", &v) == 1)
                        acquired = v;
                if (sscanf(line, "nr_foll_pin_released %ld", &v) == 1)
                        released = v;
        }
        fclose(f);
        return acquired < 0 || released < 0 ? -1 : acquired - released;
}
