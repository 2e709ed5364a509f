/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* A minimal service manager for the test VM, doing for vfio-brokerd what systemd does with
 * FileDescriptorStoreMax=: it receives READY=1 and FDSTORE=1/FDNAME=/FDSTOREREMOVE=1 on $NOTIFY_SOCKET,
 * keeps the fds, and starts a new instance with them (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID).
 *
 *   fdstore-supervisor DIR DAEMON [ARGS...]
 *
 * Commands, one per line, are read from DIR/cmd and answered on DIR/ack: kill9, term, start, quit.
 * The daemon's pid is written to DIR/pid whenever it starts. */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_FDS 1024

static struct { char name[256]; int fd; } stored[MAX_FDS];
static size_t n_stored;
static int notify_fd = -1;
static pid_t daemon_pid;
static bool ready;

static void handle_notify(void) {
        char buf[4096], control[CMSG_SPACE(sizeof(int) * 64)];
        struct iovec iov = { buf, sizeof(buf) - 1 };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control) };
        int fds[64], n_fds = 0;
        ssize_t n = recvmsg(notify_fd, &mh, MSG_CMSG_CLOEXEC);
        char name[256] = "stored";
        bool store = false, remove = false;

        if (n < 0)
                return;
        buf[n] = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                        n_fds = (int) ((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
                        memcpy(fds, CMSG_DATA(c), n_fds * sizeof(int));
                }
        for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
                if (strcmp(line, "READY=1") == 0)
                        ready = true;
                else if (strcmp(line, "FDSTORE=1") == 0)
                        store = true;
                else if (strcmp(line, "FDSTOREREMOVE=1") == 0)
                        remove = true;
                else if (strncmp(line, "FDNAME=", 7) == 0)
                        snprintf(name, sizeof(name), "%s", line + 7);
        }
        for (int i = 0; i < n_fds; i++) {
                if (store && n_stored < MAX_FDS) {
                        snprintf(stored[n_stored].name, sizeof(stored[n_stored].name), "%s", name);
                        stored[n_stored++].fd = fds[i];
                } else
                        close(fds[i]);
        }
        if (remove) {
                for (size_t i = 0; i < n_stored;) {
                        if (strcmp(stored[i].name, name) == 0) {
                                close(stored[i].fd);
                                stored[i] = stored[--n_stored];
                        } else
                                i++;
                }
        }
}

static int start(char **argv, const char *dir) {
        char path[512];
        pid_t pid;

        ready = false;
        pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                char names[65536] = "", num[32];
                int tmp[MAX_FDS];
                /* Out of the way of the targets first (RLIMIT_NOFILE may be 1024: no fixed high numbers). */
                for (size_t i = 0; i < n_stored; i++) {
                        tmp[i] = fcntl(stored[i].fd, F_DUPFD, 3 + (int) n_stored);
                        if (tmp[i] < 0)
                                _exit(120);
                        strcat(names, i ? ":" : "");
                        strcat(names, stored[i].name);
                }
                for (size_t i = 0; i < n_stored; i++)
                        if (dup2(tmp[i], 3 + (int) i) < 0)
                                _exit(121);
                for (int fd = 3 + (int) n_stored; fd < 4096; fd++)
                        close(fd);
                if (n_stored > 0) {
                        snprintf(num, sizeof(num), "%zu", n_stored);
                        setenv("LISTEN_FDS", num, 1);
                        setenv("LISTEN_FDNAMES", names, 1);
                        snprintf(num, sizeof(num), "%d", (int) getpid());
                        setenv("LISTEN_PID", num, 1);
                }
                execv(argv[0], argv);
                _exit(127);
        }
        daemon_pid = pid;
        for (int i = 0; i < 3000 && !ready; i++) {
                struct pollfd p = { notify_fd, POLLIN, 0 };
                if (poll(&p, 1, 10) > 0)
                        handle_notify();
                if (waitpid(pid, NULL, WNOHANG) == pid)
                        return -ECHILD;
        }
        snprintf(path, sizeof(path), "%s/pid", dir);
        FILE *f = fopen(path, "we");
        if (f) {
                fprintf(f, "%d\n", (int) pid);
                fclose(f);
        }
        return ready ? 0 : -ETIMEDOUT;
}

int main(int argc, char *argv[]) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        char cmd_path[512], ack_path[512];
        const char *dir;
        int status;

        if (argc < 3) {
                fprintf(stderr, "Usage: %s DIR DAEMON [ARGS...]\n", argv[0]);
                return 2;
        }
        dir = argv[1];
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/notify", dir);
        snprintf(cmd_path, sizeof(cmd_path), "%s/cmd", dir);
        snprintf(ack_path, sizeof(ack_path), "%s/ack", dir);
        (void) mkdir(dir, 0755);
        (void) mkfifo(cmd_path, 0600);
        (void) mkfifo(ack_path, 0600);
        notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (notify_fd < 0 || bind(notify_fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                perror("notify socket");
                return 1;
        }
        setenv("NOTIFY_SOCKET", sa.sun_path, 1);
        if (start(argv + 2, dir) < 0) {
                fprintf(stderr, "fdstore-supervisor: the daemon did not start\n");
                return 1;
        }
        printf("started %d\n", (int) daemon_pid);
        fflush(stdout);

        for (;;) {
                char line[64] = "", answer[64];
                int cfd = open(cmd_path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
                struct pollfd p[2] = { { notify_fd, POLLIN, 0 }, { cfd, POLLIN, 0 } };

                while (poll(p, 2, -1) > 0) {
                        if (p[0].revents & POLLIN)
                                handle_notify();
                        if (p[1].revents & (POLLIN | POLLHUP)) {
                                ssize_t n = read(cfd, line, sizeof(line) - 1);
                                if (n > 0) {
                                        line[n] = 0;
                                        break;
                                }
                                /* Writer closed without data: reopen. */
                                close(cfd);
                                cfd = p[1].fd = open(cmd_path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
                        }
                }
                close(cfd);
                line[strcspn(line, "\n")] = 0;

                if (strcmp(line, "kill9") == 0) {
                        kill(daemon_pid, SIGKILL);
                        waitpid(daemon_pid, &status, 0);
                        snprintf(answer, sizeof(answer), "killed");
                } else if (strcmp(line, "term") == 0 || strcmp(line, "quit") == 0) {
                        kill(daemon_pid, SIGTERM);
                        waitpid(daemon_pid, &status, 0);
                        snprintf(answer, sizeof(answer), "exited %d", WIFEXITED(status) ? WEXITSTATUS(status) : 128);
                } else if (strcmp(line, "start") == 0) {
                        int r = start(argv + 2, dir);
                        snprintf(answer, sizeof(answer), r < 0 ? "error %d" : "started %d", r < 0 ? r : (int) daemon_pid);
                } else
                        snprintf(answer, sizeof(answer), "unknown");

                int afd = open(ack_path, O_WRONLY | O_CLOEXEC);
                if (afd >= 0) {
                        dprintf(afd, "%s\n", answer);
                        close(afd);
                }
                if (strcmp(line, "quit") == 0)
                        break;
        }
        /* Like systemd stopping the unit for good: the stored fds close, the kernel releases all. */
        for (size_t i = 0; i < n_stored; i++)
                close(stored[i].fd);
        return 0;
}
