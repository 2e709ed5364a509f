/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <systemd/sd-daemon.h>

#include "broker.h"
#include "bus.h"
#include "config-build.h"
#include "container-dbus.h"
#include "group-dbus.h"
#include "log.h"
#include "manager-dbus.h"
#include "state.h"

typedef enum BackendKind {
        BACKEND_AUTO,
        BACKEND_VFIO,
        BACKEND_SIM,
} BackendKind;

typedef struct Arguments {
        BackendKind backend;
        const char *config_path;
        const char *state_dir;
        unsigned fdstore_max;
        bool check_config;
} Arguments;

static void help(void) {
        printf("Usage: vfio-brokerd [OPTIONS...]\n\n"
               "Opens VFIO groups and containers on behalf of unprivileged VMMs (D-Bus: "
               BROKER_BUS_NAME ").\n\n"
               "  -h --help               Show this help\n"
               "     --version            Show the version\n"
               "     --backend=auto|vfio|sim\n"
               "                          Kernel VFIO type1 (auto: when /dev/vfio/vfio exists)\n"
               "                          or the in-memory simulation\n"
               "     --config=PATH        Configuration file (default " DEFAULT_CONFIG_PATH ")\n"
               "     --state-dir=PATH     Where to keep container state for restarts\n"
               "                          (default /run/vfio-broker; used under a service manager)\n"
               "     --fdstore-max=N      The service manager keeps at most N fds for restarts\n"
               "                          (the unit's FileDescriptorStoreMax=; 0: no limit known)\n"
               "     --check-config[=PATH]\n"
               "                          Validate a configuration file and exit\n"
               "     --debug              Log debug messages\n"
               "\nSee vfio-brokerd(8).\n");
}

static int parse_argv(int argc, char *argv[], Arguments *args) {
        enum {
                ARG_VERSION = 0x100,
                ARG_BACKEND,
                ARG_CONFIG,
                ARG_CHECK_CONFIG,
                ARG_STATE_DIR,
                ARG_FDSTORE_MAX,
                ARG_DEBUG,
        };
        static const struct option options[] = {
                { "help",         no_argument,       NULL, 'h'              },
                { "version",      no_argument,       NULL, ARG_VERSION      },
                { "backend",      required_argument, NULL, ARG_BACKEND      },
                { "config",       required_argument, NULL, ARG_CONFIG       },
                { "check-config", optional_argument, NULL, ARG_CHECK_CONFIG },
                { "state-dir",    required_argument, NULL, ARG_STATE_DIR    },
                { "fdstore-max",  required_argument, NULL, ARG_FDSTORE_MAX  },
                { "debug",        no_argument,       NULL, ARG_DEBUG        },
                {}
        };
        int c;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("vfio-brokerd %s\n", VERSION);
                        return 0;
                case ARG_BACKEND:
                        if (strcmp(optarg, "auto") == 0)
                                args->backend = BACKEND_AUTO;
                        else if (strcmp(optarg, "vfio") == 0)
                                args->backend = BACKEND_VFIO;
                        else if (strcmp(optarg, "sim") == 0)
                                args->backend = BACKEND_SIM;
                        else {
                                log_error("Unknown backend \"%s\"; use auto, vfio or sim.", optarg);
                                return -EINVAL;
                        }
                        break;
                case ARG_CONFIG:
                        args->config_path = optarg;
                        break;
                case ARG_CHECK_CONFIG:
                        args->check_config = true;
                        if (optarg)
                                args->config_path = optarg;
                        break;
                case ARG_STATE_DIR:
                        args->state_dir = optarg;
                        break;
                case ARG_FDSTORE_MAX: {
                        char *end;
                        unsigned long v;
                        errno = 0;
                        v = strtoul(optarg, &end, 10);
                        if (errno || *end || end == optarg || optarg[0] == '-' || v > UINT_MAX) {
                                log_error("--fdstore-max=%s: not a number of fds.", optarg);
                                return -EINVAL;
                        }
                        args->fdstore_max = (unsigned) v;
                        break;
                }
                case ARG_DEBUG:
                        log_set_max_level(7);
                        break;
                case '?':
                        return -EINVAL;
                default:
                        abort();
                }

        if (optind < argc) {
                log_error("This program takes no positional arguments.");
                return -EINVAL;
        }
        return 1;
}

/* Pinned pages are charged to the daemon's RLIMIT_MEMLOCK (type1 accounts them to the mapping
 * process's locked_vm). The broker bounds pinning per user with its own quotas, so lift the
 * process-wide limit when privileged; the unit sets LimitMEMLOCK=infinity for the same reason. */
static void raise_limits(void) {
        struct rlimit rl = { RLIM_INFINITY, RLIM_INFINITY };

        if (setrlimit(RLIMIT_MEMLOCK, &rl) < 0) {
                int error = -errno;
                if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0)
                        log_warning_errno(error, "Cannot raise RLIMIT_MEMLOCK (%m); the kernel will pin at most "
                                          "%llu bytes for all VMs together.", (unsigned long long) rl.rlim_cur);
        }

        /* Every memory region keeps an fd, every group too. */
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                (void) setrlimit(RLIMIT_NOFILE, &rl);
        }
}

static int create_backend(const Arguments *args, const BrokerConfig *config, Backend **ret) {
        BrokerError e = BROKER_ERROR_INIT;
        BackendKind kind = args->backend;
        int r;

        if (kind == BACKEND_AUTO) {
                if (access("/dev/vfio/vfio", F_OK) < 0) {
                        log_error("No /dev/vfio/vfio on this host: load the vfio and vfio_iommu_type1 modules "
                                  "(and bind devices to vfio-pci), or start with --backend=sim to simulate.");
                        return -ENOENT;
                }
                kind = BACKEND_VFIO;
        }

        r = kind == BACKEND_VFIO ? backend_vfio_new(config, ret, &e) : backend_sim_new(config, ret, &e);
        if (r < 0)
                return log_error_errno(r, "Cannot start the %s backend: %s",
                                       kind == BACKEND_VFIO ? "vfio" : "sim",
                                       broker_error_is_set(&e) ? e.message : strerror(-r));
        return 0;
}

static int on_vfio_dir_change(sd_event_source *s, const struct inotify_event *event, void *userdata) {
        Broker *b = userdata;

        (void) broker_refresh_groups(b);
        return 0;
}

static int run(int argc, char *argv[]) {
        Arguments args = { .backend = BACKEND_AUTO, .config_path = DEFAULT_CONFIG_PATH,
                           .state_dir = "/run/vfio-broker" };
        _cleanup_(broker_config_freep) BrokerConfig *config = NULL;
        _cleanup_(backend_freep) Backend *backend = NULL;
        _cleanup_(broker_freep) Broker *broker = NULL;
        _cleanup_(sd_event_unrefp) sd_event *event = NULL;
        BrokerError e = BROKER_ERROR_INIT;
        sigset_t mask;
        int r;

        r = parse_argv(argc, argv, &args);
        if (r <= 0)
                return r;

        /* The default path may be absent (defaults apply); a path the admin named must exist. */
        r = broker_config_load(args.config_path, strcmp(args.config_path, DEFAULT_CONFIG_PATH) == 0,
                               &config, &e);
        if (r < 0) {
                log_error("%s", broker_error_is_set(&e) ? e.message : strerror(-r));
                return r;
        }
        if (args.check_config) {
                /* "OK" for a file that is not there would let a misplaced file go unnoticed. */
                if (r == 0)
                        printf("%s: no such file; the built-in defaults apply (see vfio-brokerd(8), "
                               "CONFIGURATION).\n", args.config_path);
                else
                        printf("%s: OK\n", args.config_path);
                return 0;
        }

        raise_limits();

        r = create_backend(&args, config, &backend);
        if (r < 0)
                return r;

        r = sd_event_default(&event);
        if (r < 0)
                return log_error_errno(r, "Failed to allocate the event loop: %m");

        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        (void) signal(SIGPIPE, SIG_IGN);
        r = sd_event_add_signal(event, NULL, SIGTERM, NULL, NULL);
        if (r >= 0)
                r = sd_event_add_signal(event, NULL, SIGINT, NULL, NULL);
        if (r < 0)
                return log_error_errno(r, "Failed to watch signals: %m");

        r = broker_new(event, TAKE_PTR(backend), TAKE_PTR(config), &broker);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the broker: %m");

        r = broker_refresh_groups(broker);
        if (r < 0)
                return r;

        r = state_setup(broker, args.state_dir, args.fdstore_max);
        if (r < 0)
                return r;

        if (strcmp(backend_name(broker->backend), "sim") != 0 && access("/dev/vfio", F_OK) == 0) {
                r = sd_event_add_inotify(event, NULL, "/dev/vfio", IN_CREATE | IN_DELETE | IN_ONLYDIR,
                                         on_vfio_dir_change, broker);
                if (r < 0)
                        log_warning_errno(r, "Cannot watch /dev/vfio for new groups: %m");
        }

        r = bus_connect(broker);
        if (r < 0)
                return r;

        log_info("vfio-brokerd %s serving %s on the %s backend, %zu VFIO groups.", VERSION, BROKER_BUS_NAME,
                 backend_name(broker->backend), broker->n_groups);
        (void) sd_notify(false, "READY=1\nSTATUS=Serving.");

        r = sd_event_loop(event);
        (void) sd_notify(false, "STOPPING=1\nSTATUS=Shutting down.");
        if (r < 0)
                return log_error_errno(r, "Event loop failed: %m");
        /* Under a service manager that keeps our fds, an orderly stop hands the VMs over to the next
         * instance (systemd closes the fds, and so tears everything down, if none follows). */
        if (!state_hand_over(broker))
                log_info("Shutting down.");
        return 0;
}

int main(int argc, char *argv[]) {
        int r = run(argc, argv);
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
