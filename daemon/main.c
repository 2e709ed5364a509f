/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
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
#include "device-monitor.h"
#include "event-util.h"
#include "group-dbus.h"
#include "container.h"
#include "format-util.h"
#include "log.h"
#include "manager-dbus.h"
#include "message-ids.h"
#include "quota.h"
#include "state.h"

/* Exit status when this host or configuration cannot run the broker at all (no VFIO, a bad configuration
 * file): LSB's "program is not configured". The unit lists it in RestartPreventExitStatus=, so systemd
 * logs the reason once instead of restarting into the same failure. */
#define EXIT_NOT_CONFIGURED 6
static bool cannot_run_here;

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
                        cannot_run_here = true;
                        return -ENOENT;
                }
                kind = BACKEND_VFIO;
        }

        r = kind == BACKEND_VFIO ? backend_vfio_new(config, ret, &e) : backend_sim_new(config, ret, &e);
        cannot_run_here = r < 0;
        if (r < 0)
                return log_error_errno(r, "Cannot start the %s backend: %s",
                                       kind == BACKEND_VFIO ? "vfio" : "sim",
                                       broker_error_is_set(&e) ? e.message : strerror(-r));
        return 0;
}

#define SWAP_TWO(a, b) do { __typeof__(a) _t = (a); (a) = (b); (b) = _t; } while (0)

typedef struct Daemon {
        Broker *broker;
        const char *config_path;
        char *status;             /* the last STATUS= sent, to send only changes */
        uint64_t status_sent;     /* CLOCK_MONOTONIC of that */
        sd_event_source *status_timer;
} Daemon;

/* STATUS= at most this often: each one is a message PID 1 parses, and a VMM mapping granule by granule
 * changes "pinned" with every call. */
#define STATUS_INTERVAL_USEC (1000 * 1000)

static void status_send(Daemon *d, uint64_t now) {
        Broker *b = d->broker;
        uint64_t pinned = 0;
        char bytes[32], *status = NULL;

        for (Container *c = b->containers; c; c = c->next)
                pinned += container_mapped_bytes(c);
        format_bytes(pinned, bytes, sizeof(bytes));
        if (asprintf(&status, "STATUS=%zu container%s, %u group%s attached, %s pinned", b->n_containers,
                     b->n_containers == 1 ? "" : "s", b->balloon_inhibitors, b->balloon_inhibitors == 1 ? "" : "s",
                     bytes) < 0)
                return;
        if (d->status && strcmp(d->status, status) == 0) {
                free(status);
                return;
        }
        (void) sd_notify(false, status);
        free(d->status);
        d->status = status;
        d->status_sent = now;
}

static int on_status_due(sd_event_source *s, uint64_t usec, void *userdata) {
        status_send(userdata, usec);
        return 0;
}

/* What the broker holds, for `systemctl status`: "3 containers, 2 groups attached, 4.0 GiB pinned".
 * The broker's iteration end follows every dispatch, so STATUS= follows every change: at once after a
 * quiet second, else at the end of the interval with the figures of then. Only a changed text is sent. */
static void on_iteration_end(void *userdata) {
        Daemon *d = userdata;
        uint64_t now = 0;

        if (event_is_armed(d->status_timer))
                return; /* already due */
        if (sd_event_now(d->broker->event, CLOCK_MONOTONIC, &now) < 0 ||
            now >= d->status_sent + STATUS_INTERVAL_USEC) {
                status_send(d, now);
                return;
        }
        (void) event_arm_oneshot(d->broker->event, &d->status_timer, d->status_sent + STATUS_INTERVAL_USEC,
                                 on_status_due, d);
}

static const BrokerObserver status_observer = {
        .iteration_end = on_iteration_end,
};

/* SIGHUP (ExecReload=): read the configuration again and apply what can change at run time, the
 * per-user limits. The sim section describes a simulated host, which exists from the start; the
 * command line stays as it was. A file that does not parse changes nothing. */
static int on_sighup(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Daemon *d = userdata;
        Broker *b = d->broker;
        _cleanup_(broker_config_freep) BrokerConfig *config = NULL;
        BrokerError e = BROKER_ERROR_INIT;
        int r;

        (void) sd_notify(false, "RELOADING=1\nSTATUS=Reloading the configuration.");
        r = broker_config_load(d->config_path, strcmp(d->config_path, DEFAULT_CONFIG_PATH) == 0, &config, &e);
        if (r < 0) {
                log_error("Reload: %s; keeping the configuration in use.",
                          broker_error_is_set(&e) ? e.message : strerror(-r));
        } else {
                /* The backend keeps pointers into the sim section: swap only the limits. */
                SWAP_TWO(b->config->default_limits, config->default_limits);
                SWAP_TWO(b->config->user_limits, config->user_limits);
                SWAP_TWO(b->config->n_user_limits, config->n_user_limits);
                SWAP_TWO(b->config->group_limits, config->group_limits);
                SWAP_TWO(b->config->n_group_limits, config->n_group_limits);
                /* Users holding something keep what they hold; their next charge meets the new limits. */
                for (UserUsage *u = b->usage; u; u = u->next)
                        quota_resolve_limits(b->config, u->uid, &u->limits);
                log_event(&(LogEvent) { LOG_MESSAGE_CONFIG_RELOADED },
                          "Reloaded %s: per-user limits applied (%zu user and %zu group entries); the sim section "
                          "and the command line apply at the next start.", d->config_path,
                          b->config->n_user_limits, b->config->n_group_limits);
        }
        free(d->status);
        d->status = NULL; /* READY=1 below, then the post source sends STATUS= again */
        (void) sd_notify(false, "READY=1");
        return 0;
}

/* Whether the service manager is stopping this service for good, as `systemctl stop` and shutdown do:
 * then systemd closes the fd store once we exit, and handing over would leave every mapping pinned
 * until each VMM closes its device fds (a device fd keeps its group, container and mappings alive). So
 * tear down instead. A restart job keeps the store on systemd 252 (the system VM test proves it with a
 * probe service), as do `systemctl kill` and a crash, which run no job: hand over then.
 * The bus connection of the event loop is closed by now (sd-bus closes it when the loop exits), so this
 * asks on a connection of its own, briefly. */
static bool manager_stops_us(void) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_free_ char *unit = NULL, *job_type = NULL;
        const char *unit_path, *job_path;
        uint32_t job_id;
        int r;

        if (!getenv("NOTIFY_SOCKET"))
                return false;

        r = sd_bus_open_system(&bus);
        if (r >= 0)
                r = sd_bus_set_method_call_timeout(bus, 5 * 1000000ULL);
        if (r >= 0)
                r = sd_bus_call_method(bus, "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                                       "org.freedesktop.systemd1.Manager", "GetUnitByPID", &error, &reply, "u",
                                       (uint32_t) getpid());
        if (r >= 0)
                r = sd_bus_message_read(reply, "o", &unit_path);
        if (r >= 0 && !(unit = strdup(unit_path)))
                r = -ENOMEM;
        if (r < 0) {
                log_debug_errno(r, "Cannot ask systemd for our unit (%s), handing over: %m", error.message ?: "");
                return false;
        }
        reply = sd_bus_message_unref(reply);

        r = sd_bus_get_property(bus, "org.freedesktop.systemd1", unit, "org.freedesktop.systemd1.Unit", "Job",
                                &error, &reply, "(uo)");
        if (r >= 0)
                r = sd_bus_message_read(reply, "(uo)", &job_id, &job_path);
        if (r >= 0 && job_id > 0)
                r = sd_bus_get_property_string(bus, "org.freedesktop.systemd1", job_path,
                                               "org.freedesktop.systemd1.Job", "JobType", &error, &job_type);
        if (r < 0) {
                log_debug_errno(r, "Cannot read the job of %s (%s), handing over: %m", unit, error.message ?: "");
                return false;
        }
        if (!job_type || strcmp(job_type, "stop") != 0)
                return false;
        log_info("The service manager stops this service: closing every container.");
        return true;
}

static int run(int argc, char *argv[]) {
        Arguments args = { .backend = BACKEND_AUTO, .config_path = DEFAULT_CONFIG_PATH,
                           .state_dir = "/run/vfio-broker" };
        _cleanup_(broker_config_freep) BrokerConfig *config = NULL;
        _cleanup_(backend_freep) Backend *backend = NULL;
        _cleanup_(broker_freep) Broker *broker = NULL;
        _cleanup_(device_monitor_freep) DeviceMonitor *monitor = NULL; /* goes before the broker */
        _cleanup_(sd_event_unrefp) sd_event *event = NULL;
        BrokerError e = BROKER_ERROR_INIT;
        Daemon daemon = {};
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
                cannot_run_here = !args.check_config;
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

        r = sd_event_new(&event);
        if (r < 0)
                return log_error_errno(r, "Failed to allocate the event loop: %m");

        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
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

        daemon = (Daemon) { .broker = broker, .config_path = args.config_path };
        r = sd_event_add_signal(event, NULL, SIGHUP, on_sighup, &daemon);
        if (r < 0)
                return log_error_errno(r, "Failed to watch SIGHUP: %m");

        r = broker_refresh_groups(broker);
        if (r < 0)
                return r;

        r = state_setup(broker, args.state_dir, args.fdstore_max);
        if (r < 0)
                return r;

        /* The sim's topology is its configuration; the host's follows udev. */
        if (strcmp(backend_name(broker->backend), "sim") != 0) {
                r = device_monitor_start(broker, &monitor);
                if (r < 0)
                        log_warning_errno(r, "Cannot watch the host's devices; VFIO groups are shown as at startup: %m");
        }

        r = bus_connect(broker);
        if (r < 0)
                return r;

        log_info("vfio-brokerd %s serving %s on the %s backend, %zu VFIO groups.", VERSION, BROKER_BUS_NAME,
                 backend_name(broker->backend), broker->n_groups);
        (void) sd_notify(false, "READY=1");
        r = broker_observe(broker, &status_observer, &daemon);
        if (r < 0)
                log_warning_errno(r, "Cannot keep STATUS= up to date: %m");
        /* What startup queued (restored containers, groups), and the first STATUS=, which does not open
         * an interval: the first change after it goes at once. */
        broker_iteration_end(broker);
        daemon.status_sent = 0;

        r = sd_event_loop(event);
        daemon.status_timer = sd_event_source_disable_unref(daemon.status_timer);
        free(daemon.status);
        (void) sd_notify(false, "STOPPING=1\nSTATUS=Shutting down.");
        if (r < 0)
                return log_error_errno(r, "Event loop failed: %m");
        /* Under a service manager that keeps our fds, a SIGTERM that is no stop job (a crash, `systemctl
         * kill` as in a package upgrade, `systemctl restart`) hands the VMs over to the next instance. */
        if (manager_stops_us() || !state_hand_over(broker))
                log_info("Shutting down.");
        return 0;
}

int main(int argc, char *argv[]) {
        int r = run(argc, argv);
        return r >= 0 ? EXIT_SUCCESS : cannot_run_here ? EXIT_NOT_CONFIGURED : EXIT_FAILURE;
}
