/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* What systemd does with a service's fd store, independently of vfio-brokerd: run as a service with
 * FileDescriptorStoreMax=, it appends how many fds it was given at start to FILE, then stores one memfd
 * (if it got none) and waits. Restarting it in different ways shows which ones keep the store.
 *
 *   fdstore-probe FILE */

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#include <systemd/sd-daemon.h>

int main(int argc, char *argv[]) {
        FILE *f;
        int n, fd;

        if (argc != 2)
                return 2;
        n = sd_listen_fds(true);
        f = fopen(argv[1], "ae");
        if (!f)
                return 1;
        fprintf(f, "%d\n", n);
        fclose(f);

        if (n <= 0) {
                fd = memfd_create("fdstore-probe", MFD_CLOEXEC);
                if (fd < 0 || sd_pid_notify_with_fds(0, false, "FDSTORE=1\nFDNAME=probe", &fd, 1) <= 0)
                        return 1;
                close(fd);
        }
        (void) sd_notify(false, "READY=1");
        for (;;)
                pause();
}
