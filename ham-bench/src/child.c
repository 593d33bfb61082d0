/* ham-bench's supervised service, statically linked: the floor every system restarts.
 *
 * The same contract as src/child.rs (the dynamically linked Rust version, kept for
 * `--dynamic-child`): the first statement of main reads CLOCK_MONOTONIC; the process then
 * writes "<id> <pid> <ns>\n" (shorter than PIPE_BUF, so one atomic write) to the report
 * FIFO, signals s6 readiness when its folder has a `notification-fd`, and pauses.
 *
 *   id:   argv[1], else the base name of the working folder (s6 and runsv run ./run);
 *   FIFO: argv[2], else $ANCHOR_FIFO; with neither, nothing is reported.
 *
 * Static, so that no dynamic loader runs between exec and the stamp: ld.so adds about
 * 0.2 ms to every restart of every system and dilutes every ratio toward 1.
 * The bench compiles this file itself (`cc -O2 -static`) into its work folder.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void notify_s6_readiness(void) {
    char buf[32];
    int fd = open("notification-fd", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return;
    buf[n] = '\0';
    char *end = NULL;
    long nfd = strtol(buf, &end, 10);
    if (end != buf && nfd >= 0 && nfd < 1024)
        (void)!write((int)nfd, "\n", 1);
}

int main(int argc, char **argv) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    unsigned long long stamp =
        (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;

    char cwd[4096];
    const char *id = "unknown";
    if (argc > 1) {
        id = argv[1];
    } else if (getcwd(cwd, sizeof cwd) != NULL) {
        const char *slash = strrchr(cwd, '/');
        id = slash != NULL && slash[1] != '\0' ? slash + 1 : cwd;
    }
    const char *fifo = argc > 2 ? argv[2] : getenv("ANCHOR_FIFO");
    if (fifo != NULL) {
        char line[512];
        int len = snprintf(line, sizeof line, "%s %d %llu\n", id, (int)getpid(), stamp);
        int fd = open(fifo, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd >= 0 && len > 0 && (size_t)len < sizeof line) {
            (void)!write(fd, line, (size_t)len);
        }
        if (fd >= 0)
            close(fd);
    }
    notify_s6_readiness();
    for (;;)
        pause();
}
