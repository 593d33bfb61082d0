/* A QNX HAM client for the integration tests (tests/integration/qnx.rs): each mode is one
 * thing a QNX program does, written as QNX's documentation says it works. It includes only
 * <ha/ham.h> and what it uses besides (the header brings <signal.h>, <inttypes.h> and
 * <stdint.h>, as QNX's does). Every failure prints the call and errno and exits 1.
 *
 *   qnx_client restart-once NAME PID MARKER   death → restart, plus restart/any/raise hooks
 *   qnx_client storm NAME PID                  death → restart into a program that exits
 *   qnx_client reattach NAME PID1 PID2 N       attach, detach, attach again, N times
 *   qnx_client line NAME N                     attach by line, detach, N times
 *   qnx_client service NAME MARKER BEATS       self-attached service: re-adds its condition
 *   qnx_client respawn NAME LINE               a monitor: death → restart with LINE
 *   qnx_client late NAME PID MISSING MARKER    actions naming a program not there yet
 *   qnx_client nobeat NAME                     ham_attach_self without a heartbeat
 *   qnx_client waitfor NAME                    waitfor with a NULL path; NOWAIT refusals
 *   qnx_client pulse-define NAME CHID CODE VALUE  raise → notify_pulse
 *   qnx_client pulse-wait CHID N               receives N pulses through ham_pulse_open
 *                                              (says `reconnected` after a takeover)
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ha/ham.h>

/* What the header must bring and define, as QNX 6.6's does. */
_Static_assert(CONDMIN == CONDANY && CONDMAX == CONDRAISE, "CONDMIN / CONDMAX");
_Static_assert(HENTITYKEEPONDEATH == 0x2, "HENTITYKEEPONDEATH is QNX's 0x2");
_Static_assert(HCONDSTATEFROMSET == 0x1000 && HCONDSTATETOINV == 0x8000, "state set flags");
_Static_assert(HRECURSE == 0x00100000, "HRECURSE");
_Static_assert(HAMHBEATMIN == 1000000000UL, "HAMHBEATMIN is QNX's 1 s");
static const int rt_signal_from_header_includes(void) { return SIGRTMIN; }
static const char *u64_format_from_header_includes = "%" PRIu64;

static void fail(const char *call) {
    fprintf(stderr, "qnx_client: %s: %s\n", call, strerror(errno));
    exit(1);
}

#define NEED(x, call)                                                                      \
    do {                                                                                   \
        if ((x) == NULL)                                                                   \
            fail(call);                                                                    \
    } while (0)

static void say(const char *line) {
    printf("%s\n", line);
    fflush(stdout);
}

static void append(const char *path, const char *line) {
    FILE *f = fopen(path, "a");
    if (f == NULL)
        fail("fopen");
    fprintf(f, "%s\n", line);
    fclose(f);
}

/* One handle type for entities, conditions and actions, as in QNX: code that keeps them in
 * one variable compiles. */
static void one_handle_type(ham_entity_t *e) {
    ham_entity_t *h = e;
    ham_condition_t *c = h;
    ham_action_t *a = c;
    (void)a;
}

static void restart_once(const char *name, pid_t pid, const char *marker) {
    char line[512];
    ham_entity_t *e = ham_attach(name, ND_LOCAL_NODE, pid, NULL, 0);
    NEED(e, "ham_attach");
    one_handle_type(e);
    ham_condition_t *death = ham_condition(e, CONDDEATH, "death", HREARMAFTERRESTART);
    NEED(death, "ham_condition death");
    NEED(ham_action_restart(death, "restart", "/bin/sleep 1000", HREARMAFTERRESTART),
         "ham_action_restart");
    ham_condition_t *rs = ham_condition(e, CONDRESTART, "restarted", HREARMAFTERRESTART);
    NEED(rs, "ham_condition restart");
    snprintf(line, sizeof line, "/bin/sh -c 'echo restart $HAM_PID >> %s'", marker);
    NEED(ham_action_execute(rs, "note", line, HREARMAFTERRESTART), "ham_action_execute restart");
    ham_condition_t *any = ham_condition(e, CONDANY, "any", HREARMAFTERRESTART);
    NEED(any, "ham_condition any");
    snprintf(line, sizeof line, "/bin/sh -c 'echo any $HAM_CONDITION >> %s'", marker);
    NEED(ham_action_execute(any, "note", line, HREARMAFTERRESTART), "ham_action_execute any");
    /* A sentinel: runs queue per entity, so its line comes after any the death caused. */
    ham_condition_t *end = ham_condition_raise(e, "sentinel", 0, 0, 0, HREARMAFTERRESTART);
    NEED(end, "ham_condition_raise");
    snprintf(line, sizeof line, "/bin/sh -c 'echo end >> %s'", marker);
    NEED(ham_action_execute(end, "note", line, HREARMAFTERRESTART), "ham_action_execute end");
    say("defined");
}

static void storm(const char *name, pid_t pid) {
    ham_entity_t *e = ham_attach(name, ND_LOCAL_NODE, pid, NULL, 0);
    NEED(e, "ham_attach");
    ham_condition_t *death = ham_condition(e, CONDDEATH, "death", HREARMAFTERRESTART);
    NEED(death, "ham_condition");
    NEED(ham_action_restart(death, "restart", "/bin/sh -c 'exit 3'", HREARMAFTERRESTART),
         "ham_action_restart");
    say("defined");
}

static void reattach(const char *name, pid_t first, pid_t second, int n) {
    for (int i = 0; i < n; i++) {
        ham_entity_t *e = ham_attach(name, ND_LOCAL_NODE, i % 2 ? second : first, NULL, 0);
        NEED(e, "ham_attach");
        NEED(ham_condition(e, CONDDEATH, "death", 0), "ham_condition");
        if (ham_detach(e, 0) == -1)
            fail("ham_detach");
        ham_entity_handle_free(e);
    }
    NEED(ham_attach(name, ND_LOCAL_NODE, second, NULL, 0), "ham_attach (last)");
    say("attached");
}

static void by_line(const char *name, int n) {
    for (int i = 0; i < n; i++) {
        ham_entity_t *e = ham_attach(name, ND_LOCAL_NODE, -1, "/bin/sleep 1000", 0);
        NEED(e, "ham_attach (line)");
        if (ham_detach_name(ND_LOCAL_NODE, name, 0) == -1)
            fail("ham_detach_name");
        ham_entity_handle_free(e);
    }
    NEED(ham_attach(name, ND_LOCAL_NODE, -1, "/bin/sleep 1000", 0), "ham_attach (last)");
    say("attached");
}

/* A self-attached service: at every start it attaches itself and adds its own death
 * condition (the same definition each time), writes "ready PID" to MARKER, beats BEATS
 * times every 20 ms, then falls silent. */
static void service(const char *name, const char *marker, long beats) {
    ham_entity_t *me = ham_attach_self(name, 20000000ULL, 2, 4, 0);
    NEED(me, "ham_attach_self");
    ham_condition_t *c = ham_condition(me, CONDDEATH, "my-death", HREARMAFTERRESTART);
    NEED(c, "ham_condition (again after a restart)");
    NEED(ham_action_log(c, "say", "service died", 0, 1, HREARMAFTERRESTART), "ham_action_log");
    char line[64];
    snprintf(line, sizeof line, "ready %d", (int)getpid());
    append(marker, line);
    struct timespec period = {0, 20000000L};
    for (long i = 0; i < beats; i++) {
        ham_heartbeat();
        nanosleep(&period, NULL);
    }
    append(marker, "silent");
    for (;;)
        pause();
}

static void respawn(const char *name, const char *line) {
    ham_entity_t *e = ham_entity_handle(ND_LOCAL_NODE, name, 0);
    NEED(e, "ham_entity_handle");
    ham_condition_t *c = ham_condition(e, CONDDEATH, "respawn", HREARMAFTERRESTART);
    NEED(c, "ham_condition");
    NEED(ham_action_restart(c, "restart", line, HREARMAFTERRESTART), "ham_action_restart");
    say("defined");
}

static void late(const char *name, pid_t pid, const char *missing, const char *marker) {
    char line[512];
    ham_entity_t *e = ham_attach(name, ND_LOCAL_NODE, pid, NULL, 0);
    NEED(e, "ham_attach");
    ham_condition_t *c = ham_condition(e, CONDDEATH, "death", HREARMAFTERRESTART);
    NEED(c, "ham_condition");
    /* Neither program exists yet: QNX checks at spawn time, so both are accepted now. */
    ham_action_t *x = ham_action_execute(c, "hook", missing, 0);
    NEED(x, "ham_action_execute (program not there yet)");
    snprintf(line, sizeof line, "/bin/sh -c 'echo hook-failed >> %s'", marker);
    if (ham_action_fail_execute(x, "hook-failed", line, 0) == -1)
        fail("ham_action_fail_execute");
    ham_action_t *r = ham_action_restart(c, "restart", missing, 0);
    NEED(r, "ham_action_restart (program not there yet)");
    snprintf(line, sizeof line, "/bin/sh -c 'echo restart-failed >> %s'", marker);
    if (ham_action_fail_execute(r, "restart-failed", line, 0) == -1)
        fail("ham_action_fail_execute");
    say("defined");
}

static void nobeat(const char *name) {
    NEED(ham_attach_self(name, 0, 0, 0, 0), "ham_attach_self");
    say("attached");
    for (;;)
        pause();
}

static void waitfor(const char *name) {
    ham_entity_t *e = ham_entity_handle(ND_LOCAL_NODE, name, 0);
    NEED(e, "ham_entity_handle");
    ham_condition_t *c = ham_condition(e, CONDDEATH, "pause", 0);
    NEED(c, "ham_condition");
    /* QNX: with no path, a waitfor is a plain delay. */
    NEED(ham_action_waitfor(c, "settle", NULL, 100, 0), "ham_action_waitfor (NULL path)");
    ham_condition_t *nw = ham_condition(e, CONDDEATH, "quick", HCONDNOWAIT);
    NEED(nw, "ham_condition (NOWAIT)");
    if (ham_action_waitfor(nw, "settle", NULL, 100, 0) != NULL || errno != EINVAL) {
        fprintf(stderr, "qnx_client: a NULL-path waitfor under HCONDNOWAIT was not EINVAL\n");
        exit(1);
    }
    if (ham_action_waitfor(c, "never", NULL, 0, 0) != NULL || errno != EINVAL) {
        fprintf(stderr, "qnx_client: a waitfor of 0 ms was not EINVAL\n");
        exit(1);
    }
    if (ham_condition_state(e, "set", 0x3, 0, HCONDSTATEFROMSET) != NULL || errno != EOPNOTSUPP) {
        fprintf(stderr, "qnx_client: HCONDSTATEFROMSET was not EOPNOTSUPP\n");
        exit(1);
    }
    say("defined");
}

static void pulse_define(const char *name, int chid, int code, int value) {
    ham_entity_t *e = ham_entity_handle(ND_LOCAL_NODE, name, 0);
    NEED(e, "ham_entity_handle");
    ham_condition_t *c = ham_condition_raise(e, "poke", 0, 0, 0, HREARMAFTERRESTART);
    NEED(c, "ham_condition_raise");
    NEED(ham_action_notify_pulse(c, "pulse", ND_LOCAL_NODE, 0, chid, code, value, 0),
         "ham_action_notify_pulse");
    say("defined");
}

static void pulse_wait(int chid, int n) {
    int fd = ham_pulse_open(chid, 0);
    if (fd == -1)
        fail("ham_pulse_open");
    say("open");
    for (int got = 0; got < n;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, -1) == -1) {
            if (errno == EINTR)
                continue;
            fail("poll");
        }
        ham_pulse_t pulse;
        if (ham_pulse_receive(fd, &pulse, 0) == -1) {
            if (errno != EAGAIN)
                fail("ham_pulse_receive");
            /* Nothing yet; or the HAM was gone (the descriptor hung up) and this call
             * subscribed again with its successor: said, so that a test can wait for it. */
            if (p.revents & POLLHUP)
                say("reconnected");
            continue;
        }
        printf("pulse %d %d %d %s %s %d\n", pulse.chid, pulse.code, pulse.value, pulse.entity,
               pulse.condition, (int)pulse.pid);
        fflush(stdout);
        got++;
    }
    if (ham_pulse_close(fd) == -1)
        fail("ham_pulse_close");
    if (ham_pulse_close(fd) != -1 || errno != EBADF) {
        fprintf(stderr, "qnx_client: closing twice was not EBADF\n");
        exit(1);
    }
}

int main(int argc, char **argv) {
    (void)rt_signal_from_header_includes;
    (void)u64_format_from_header_includes;
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "restart-once") && argc == 5)
        restart_once(argv[2], atoi(argv[3]), argv[4]);
    else if (!strcmp(mode, "storm") && argc == 4)
        storm(argv[2], atoi(argv[3]));
    else if (!strcmp(mode, "reattach") && argc == 6)
        reattach(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
    else if (!strcmp(mode, "line") && argc == 4)
        by_line(argv[2], atoi(argv[3]));
    else if (!strcmp(mode, "service") && argc == 5)
        service(argv[2], argv[3], atol(argv[4]));
    else if (!strcmp(mode, "respawn") && argc == 4)
        respawn(argv[2], argv[3]);
    else if (!strcmp(mode, "late") && argc == 6)
        late(argv[2], atoi(argv[3]), argv[4], argv[5]);
    else if (!strcmp(mode, "nobeat") && argc == 3)
        nobeat(argv[2]);
    else if (!strcmp(mode, "waitfor") && argc == 3)
        waitfor(argv[2]);
    else if (!strcmp(mode, "pulse-define") && argc == 6)
        pulse_define(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
    else if (!strcmp(mode, "pulse-wait") && argc == 4)
        pulse_wait(atoi(argv[2]), atoi(argv[3]));
    else {
        fprintf(stderr, "qnx_client: unknown mode or arguments (see the comment at the top)\n");
        return 2;
    }
    return 0;
}
