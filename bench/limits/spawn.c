/*
 * spawn.c -- raw limit of W4 in shared WORKLOADS.md: start /bin/true N times
 * and wait for each, keeping K children in flight, with no bus and no broker.
 *
 *   spawn [--n N] [--inflight K] [--method posix_spawn|fork|all] [--prog PATH]
 *         [--label S]
 *
 *   N        children in all (default 500)
 *   K        children running at once (default 1 = sequential)
 *   method   posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK) + exec),
 *            fork (fork + execve), or all (default: both, one after the other)
 *
 * Prints one JSON line per method: wall seconds, tasks/s, failures (a child
 * that did not exit 0 counts as a failure, as `check=True` would), and the
 * parent's run delay (time it waited for a CPU while runnable: with K
 * children in flight on fewer CPUs, mostly its own children's doing), the CPU
 * time of the parent and its children, and "others_cpu_pct": the share of
 * the machine's CPU time used meanwhile by everything else (10 ms ticks).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "probe.h"

extern char **environ;

static void usage(void)
{
	fprintf(stderr, "usage: spawn [--n N] [--inflight K] [--method posix_spawn|fork|all] "
			"[--prog PATH] [--label S]\n");
	exit(2);
}

/* start one child running prog; returns its pid or -1 */
static pid_t start(int use_fork, const char *prog)
{
	char *argv[] = {(char *)prog, NULL};
	if (use_fork) {
		pid_t pid = fork();
		if (pid == 0) {
			execve(prog, argv, environ);
			_exit(127);
		}
		return pid;
	}
	pid_t pid;
	int rc = posix_spawn(&pid, prog, NULL, NULL, argv, environ);
	if (rc != 0) {
		errno = rc;
		return -1;
	}
	return pid;
}

static const char *label = "";

static void run(int use_fork, long n, long k, const char *prog)
{
	long started = 0, running = 0, failed = 0, done = 0;
	unsigned long long d0 = run_delay_ns();
	double busy0 = machine_busy_s(), own0 = own_cpu_s();
	double t0 = now_s();
	while (done < n) {
		while (running < k && started < n) {
			if (start(use_fork, prog) < 0) {
				fprintf(stderr, "spawn: starting %s: %s\n", prog, strerror(errno));
				exit(1);
			}
			started++;
			running++;
		}
		int status;
		pid_t pid = waitpid(-1, &status, 0); /* only our own children exist */
		if (pid < 0) {
			if (errno == EINTR)
				continue;
			perror("spawn: waitpid");
			exit(1);
		}
		running--;
		done++;
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			failed++;
	}
	double wall = now_s() - t0;
	double delay_ms = (run_delay_ns() - d0) / 1e6;
	double own = own_cpu_s() - own0, busy = machine_busy_s() - busy0;
	double others = busy - own; /* ticks of 10 ms: coarse */
	if (others < 0)
		others = 0;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	printf("{\"probe\":\"spawn\",\"method\":\"%s\",\"prog\":\"%s\",\"n\":%ld,\"inflight\":%ld,"
	       "\"wall_s\":%.4f,\"tasks_per_s\":%.1f,\"us_per_task\":%.1f,\"failed\":%ld,"
	       "\"run_delay_ms\":%.1f,\"own_cpu_s\":%.3f,\"others_cpu_pct\":%.1f,"
	       "\"label\":\"%s\"}\n",
	       use_fork ? "fork+exec" : "posix_spawn", prog, n, k, wall, n / wall, wall / n * 1e6,
	       failed, delay_ms, own, 100 * others / (ncpu * wall), label);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	long n = 500, k = 1;
	const char *method = "all", *prog = "/bin/true";
	for (int i = 1; i < argc; i++) {
		if (i + 1 >= argc)
			usage();
		const char *o = argv[i], *v = argv[++i];
		if (!strcmp(o, "--n"))
			n = atol(v);
		else if (!strcmp(o, "--inflight"))
			k = atol(v);
		else if (!strcmp(o, "--method"))
			method = v;
		else if (!strcmp(o, "--prog"))
			prog = v;
		else if (!strcmp(o, "--label"))
			label = v; /* copied as is: no quotes or backslashes */
		else
			usage();
	}
	if (n <= 0 || k <= 0)
		usage();
	int ps = !strcmp(method, "posix_spawn") || !strcmp(method, "all");
	int fk = !strcmp(method, "fork") || !strcmp(method, "all");
	if (!ps && !fk)
		usage();
	if (ps)
		run(0, n, k, prog);
	if (fk)
		run(1, n, k, prog);
	return 0;
}
