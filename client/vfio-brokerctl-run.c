/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vfio-brokerctl run: an unmodified VMM with a brokered device over vfio-user. */

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "macro.h"
#include "vfio-brokerctl-private.h"

/* Binds a listening socket at path. A socket file nobody listens on any more (a run that was killed)
 * is replaced; anything else at path is left alone and refused. */
static int listen_at(const char *path, int *ret_fd) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        _cleanup_close_ int fd = -EBADF;
        struct stat st;

        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        memcpy(sa.sun_path, path, strlen(path));
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                if (errno != EADDRINUSE || lstat(path, &st) < 0 || !S_ISSOCK(st.st_mode))
                        return -errno;
                _cleanup_close_ int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
                if (probe < 0)
                        return -errno;
                if (connect(probe, (struct sockaddr *) &sa, sizeof(sa)) == 0 || errno != ECONNREFUSED)
                        return -EADDRINUSE; /* somebody serves there */
                if (unlink(path) < 0 || bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                        return -errno;
        }
        if (listen(fd, 1) < 0) {
                int error = -errno;
                (void) unlink(path);
                return error;
        }
        *ret_fd = TAKE_FD(fd);
        return 0;
}

/* Runs argv with the signals it would have had; returns its exit status as a shell reports it, and
 * forwards SIGINT, SIGTERM and SIGHUP to it meanwhile, so that stopping the run stops the VMM first. */
static int run_vmm(char **argv) {
        sigset_t mask, old;
        pid_t pid;

        sigemptyset(&mask);
        sigaddset(&mask, SIGCHLD);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGHUP);
        if (sigprocmask(SIG_BLOCK, &mask, &old) < 0)
                return -errno;

        pid_t parent = getpid();
        pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                (void) sigprocmask(SIG_SETMASK, &old, NULL);
                /* If the run dies without forwarding anything (SIGKILL, a crash), its container closes
                 * with its bus connection: the VMM would keep a device without mappings. It gets the
                 * SIGTERM a stop would have sent it. */
                if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != parent)
                        _exit(128 + SIGTERM);
                execvp(argv[0], argv);
                fprintf(stderr, "vfio-brokerctl: cannot run %s: %s\n", argv[0], strerror(errno));
                _exit(127);
        }

        for (;;) {
                siginfo_t si;
                int status;

                if (sigwaitinfo(&mask, &si) < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (si.si_signo != SIGCHLD) {
                        (void) kill(pid, si.si_signo);
                        continue;
                }
                if (waitpid(pid, &status, WNOHANG) != pid)
                        continue;
                (void) sigprocmask(SIG_SETMASK, &old, NULL);
                return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
}

static int group_of_device(vfio_broker *b, const char *device, uint32_t *ret) {
        vfio_broker_group *groups = NULL;
        size_t n = 0;
        int r;

        r = vfio_broker_list_groups(b, &groups, &n);
        if (r < 0)
                return r;
        r = -ENODEV;
        for (size_t i = 0; i < n && r < 0; i++)
                for (char **d = groups[i].devices; d && *d; d++)
                        if (strcmp(*d, device) == 0) {
                                *ret = groups[i].id;
                                r = 0;
                        }
        vfio_broker_groups_free(groups, n);
        return r;
}

int run_main(int argc, char **argv) {
        static const struct option options[] = {
                { "device", required_argument, NULL, 'd' },
                { "socket", required_argument, NULL, 's' },
                { "label",  required_argument, NULL, 'l' },
                { "help",   no_argument,       NULL, 'h' },
                {}
        };
        const char *device = NULL, *socket_path = NULL, *label = NULL;
        vfio_broker *b = NULL;
        vfio_broker_container *container = NULL;
        _cleanup_close_ int listener = -EBADF;
        uint32_t group = 0;
        int c, r, status;

        /* "+": the VMM's command line starts at the first word that is not ours; "--" is allowed. */
        optind = 1;
        while ((c = getopt_long(argc, argv, "+d:s:l:h", options, NULL)) >= 0)
                switch (c) {
                case 'd':
                        device = optarg;
                        break;
                case 's':
                        socket_path = optarg;
                        break;
                case 'l':
                        label = optarg;
                        break;
                case 'h':
                        help(stdout);
                        return EXIT_OK;
                default:
                        fprintf(stderr, "See \"vfio-brokerctl help\".\n");
                        return EXIT_USAGE;
                }
        if (!device || !socket_path || optind >= argc) {
                fprintf(stderr, "vfio-brokerctl: run needs --device DEVICE, --socket PATH and the VMM's command "
                        "line after them (run --device 0000:01:00.0 --socket /run/user/1000/vm.sock -- "
                        "qemu-system-x86_64 ...).\n");
                return EXIT_USAGE;
        }
        char **vmm = argv + optind;

        r = vfio_broker_open(&b);
        if (r < 0) {
                fprintf(stderr, "vfio-brokerctl: cannot connect to the system bus: %s\n", strerror(-r));
                return EXIT_UNAVAILABLE;
        }
        r = group_of_device(b, device, &group);
        if (r == -ENODEV) {
                fprintf(stderr, "vfio-brokerctl: there is no device %s in any VFIO group the broker serves (see "
                        "\"vfio-brokerctl groups\").\n", device);
                status = EXIT_ERROR;
                goto finish;
        }
        if (r < 0) {
                status = exit_for(b, r, "Cannot list the VFIO groups");
                goto finish;
        }
        r = vfio_broker_container_new(b, label ?: basename(vmm[0]), &container);
        if (r < 0) {
                status = exit_for(b, r, "Cannot create a container");
                goto finish;
        }
        r = vfio_broker_container_attach_group(container, group);
        if (r < 0) {
                status = exit_for(b, r, "Cannot attach the device's VFIO group");
                goto finish;
        }
        r = listen_at(socket_path, &listener);
        if (r < 0) {
                fprintf(stderr, "vfio-brokerctl: cannot listen on %s: %s\n", socket_path, strerror(-r));
                status = EXIT_ERROR;
                goto finish;
        }
        r = vfio_broker_container_serve_vfio_user(container, device, listener);
        if (r < 0) {
                status = exit_for(b, r, "Cannot serve the device");
                (void) unlink(socket_path);
                goto finish;
        }
        /* The broker has its own copy; ours would only keep the socket open after the container ends. */
        listener = safe_close(listener);

        fprintf(stderr, "vfio-brokerctl: serving %s (VFIO group %" PRIu32 ") on %s for %s, container %s.\n",
                device, group, socket_path, vmm[0], vfio_broker_container_get_path(container));
        r = run_vmm(vmm);
        if (r < 0) {
                fprintf(stderr, "vfio-brokerctl: cannot run %s: %s\n", vmm[0], strerror(-r));
                status = EXIT_ERROR;
        } else
                status = r;
        (void) unlink(socket_path);

finish:
        /* Closing the container (which frees our handle) stops serving and releases every mapping the
         * VMM made, before we exit. */
        if (container && vfio_broker_container_close(TAKE_PTR(container)) < 0)
                fprintf(stderr, "vfio-brokerctl: cannot close the container: %s\n", vfio_broker_error_message(b));
        vfio_broker_unref(b);
        return status;
}
