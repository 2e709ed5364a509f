/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vfio-brokerctl: inspect and administer vfio-brokerd. See vfio-brokerctl(1).
 * This file: the global options, the dispatch to a command, the help. The commands are in
 * vfio-brokerctl-inspect.c (status, groups, list, show, close), vfio-brokerctl-monitor.c and
 * vfio-brokerctl-run.c; what they share, in vfio-brokerctl-private.h. */

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "vfio-brokerctl-private.h"

bool arg_json;

void help(FILE *f) {
        fprintf(f, "Usage: vfio-brokerctl [OPTIONS] COMMAND [ARGS]\n\n"
               "Inspect and administer vfio-brokerd (org.vfiobroker.Broker1).\n\n"
               "Commands:\n"
               "  status            Backend, version and balloon state\n"
               "  groups            VFIO groups: devices, viability, container\n"
               "  list              Containers: owner, uid, label, groups, mappings, bytes\n"
               "  show ID|PATH      One container in detail\n"
               "  monitor           Stream balloon and container changes until interrupted\n"
               "  close ID|PATH     Close a container (administrators)\n"
               "  run --device DEVICE --socket PATH [--label LABEL] -- VMM [ARGS...]\n"
               "                    Serve DEVICE over vfio-user on PATH for an unmodified VMM, run it,\n"
               "                    and hold the container for its lifetime (exit status: the VMM's)\n"
               "  help              Show this help\n\n"
               "Options (before or after the command):\n"
               "  -j --json         Machine-readable output (one JSON document; JSON lines for monitor)\n"
               "  -h --help         Show this help\n"
               "     --version      Show the version\n\n"
               "Exit status: 0 success, 1 refused or failed, 2 usage, 3 broker unavailable,\n"
               "4 no such container, 5 not authorized. See vfio-brokerctl(1).\n");
}

static int cmd_help(vfio_broker *b, int argc, char **argv) {
        help(stdout);
        return EXIT_OK;
}

int main(int argc, char *argv[]) {
        static const struct option options[] = {
                { "json",    no_argument, NULL, 'j' },
                { "help",    no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                {}
        };
        static const struct {
                const char *name;
                int (*run)(vfio_broker *b, int argc, char **argv);
                int n_args;             /* words after the command */
                const char *args;       /* what they are, for the usage error */
        } commands[] = {
                { "status",  cmd_status,  0 },
                { "groups",  cmd_groups,  0 },
                { "list",    cmd_list,    0 },
                { "show",    cmd_show,    1, "one container id or object path" },
                { "monitor", cmd_monitor, 0 },
                { "close",   cmd_close,   1, "one container id or object path" },
                { "help",    cmd_help,    0 },
        };
        _cleanup_free_ char **words = NULL;
        size_t n_words = 0;
        vfio_broker *b = NULL;
        int c, r;

        /* run has options of its own, and everything after them is the VMM's: it parses its words
         * itself. Global options may come before it. */
        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "-j") == 0 || strcmp(argv[i], "--json") == 0)
                        continue;
                if (strcmp(argv[i], "run") == 0)
                        return run_main(argc - i, argv + i);
                break;
        }

        /* Options may come before or after the command, as in systemctl and busctl: a leading '-' makes
         * getopt hand over each other word in order (code 1) instead of stopping at the first one, whatever
         * POSIXLY_CORRECT says. Everything after "--" is a word too. */
        words = calloc(argc + 1, sizeof(char *));
        if (!words)
                return EXIT_ERROR;
        while ((c = getopt_long(argc, argv, "-jh", options, NULL)) >= 0)
                switch (c) {
                case 1:
                        words[n_words++] = optarg;
                        break;
                case 'j':
                        arg_json = true;
                        break;
                case 'h':
                        help(stdout);
                        return EXIT_OK;
                case 'V':
                        printf("vfio-brokerctl " VERSION "\n");
                        return EXIT_OK;
                default:
                        /* getopt said what was wrong ("unrecognized option '--jsn'"). */
                        fprintf(stderr, "See \"vfio-brokerctl help\".\n");
                        return EXIT_USAGE;
                }
        while (optind < argc)
                words[n_words++] = argv[optind++];
        if (n_words == 0) {
                fprintf(stderr, "vfio-brokerctl: no command given.\n\n");
                help(stderr);
                return EXIT_USAGE;
        }

        for (size_t i = 0; i < ELEMENTSOF(commands); i++) {
                if (strcmp(words[0], commands[i].name) != 0)
                        continue;
                /* Refused before anything is asked of the broker: a word the command does not take is a
                 * mistake (a misspelt option, a second id), not something to ignore. */
                if (n_words - 1 != (size_t) commands[i].n_args) {
                        if (commands[i].n_args == 0)
                                fprintf(stderr, "vfio-brokerctl: %s takes no arguments, got \"%s\"; see "
                                        "\"vfio-brokerctl help\".\n", words[0], words[1]);
                        else
                                fprintf(stderr, "vfio-brokerctl: %s takes %s, got %zu arguments.\n", words[0],
                                        commands[i].args, n_words - 1);
                        return EXIT_USAGE;
                }
                if (commands[i].run == cmd_help)
                        return cmd_help(NULL, 0, NULL);
                r = vfio_broker_open(&b);
                if (r < 0) {
                        const char *address = getenv("DBUS_SYSTEM_BUS_ADDRESS");
                        fprintf(stderr, "vfio-brokerctl: cannot connect to the system bus (%s): %s\n",
                                address ?: "unix:path=/run/dbus/system_bus_socket", strerror(-r));
                        return EXIT_UNAVAILABLE;
                }
                r = commands[i].run(b, (int) n_words, words);
                vfio_broker_unref(b);
                return r;
        }
        fprintf(stderr, "vfio-brokerctl: unknown command \"%s\"; see \"vfio-brokerctl help\".\n", words[0]);
        return EXIT_USAGE;
}
