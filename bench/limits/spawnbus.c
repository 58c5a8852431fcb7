/*
 * spawnbus.c -- the floor of W4 in shared WORKLOADS.md on a folder: the least
 * a goal of N process-per-task tasks can cost when it keeps to the bus's
 * contract for a spawn worker, with nothing else: no parsing, no scheduling
 * state, no logging, no status. Where spawn.c measures /bin/true alone, this
 * adds the files the contract asks of each task and the plumbing of its
 * process, so W4's distance from the raw rate splits into what the contract
 * costs on this folder and what the daemon adds to it.
 *
 *   spawnbus [--n N] [--inflight K] [--fsync 0|1] [--start clone|posix_spawn]
 *            [--prog PATH] [--keep 0|1] [--label S] DIR
 *
 *   N        tasks of the goal (default 500)
 *   K        processes running at once (default 4, as W4's worker)
 *   fsync    1 (default): the accepted goal, the results and the report are
 *            made durable; 0: nothing is
 *   start    how the processes start (default clone; see below)
 *   keep     1: leave the run's files for the caller to remove (the path is
 *            in "run_dir"); 0 (default): remove them before printing
 *
 * One process, as the daemon is. After t0, for the goal: its record written
 * to goals/; the first K task records written straight into claimed/
 * (published and claimed at once), the other N-K published in tasks/
 * (queued: the record in tasks/, SPEC's lifecycle; derived state, not
 * fsynced). Per task, when a slot is free: the claim (a rename from tasks/
 * into claimed/), its process started in a process group of its own with
 * the claimed record on stdin, stdout and stderr on pipes and the record's
 * paths in its environment; when it has ended (waitpid): both pipes read to
 * their end, its exit status checked, the result record written into the
 * goal's archive folder and the claim moved there too. Then the goal and
 * every result are made durable at once (one syncfs: nothing depended on a
 * result before the report, so the contract lets them wait until then), and
 * the report is written (fdatasync, rename, fsync of reports/); t1.
 *
 * The processes start the cheapest way known here, as workbusd starts them
 * (--start clone: a clone that shares the memory without waiting for the
 * exec, the child making raw system calls only until it execs), or as the
 * raw probe spawn.c does (--start posix_spawn: glibc's, which waits for the
 * exec).
 *
 * Output: one JSON line: wall seconds, tasks/s, failures, the CPU time of the
 * process, its threads and its children, the main thread's run delay, and
 * "others_cpu_pct" (as spawn.c).
 *
 * Works in DIR/.workbus-limits/spawnbus-<pid>-<ns> (see publish.c for why
 * there, and why the emptied run directories are kept for 10 minutes).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "probe.h"

extern char **environ;

static const char *folders[] = {"goals", "tasks", "claimed", "archive", "reports"};
enum { F_GOALS, F_TASKS, F_CLAIMED, F_ARCHIVE, F_REPORTS, F_N };

static int dfd[F_N];
static int do_fsync = 1, use_clone = 1;
static const char *goal = "w4-floor";

static void die(const char *what, const char *arg)
{
	fprintf(stderr, "spawnbus: %s %s: %s\n", what, arg ? arg : "", strerror(errno));
	exit(1);
}

static void usage(void)
{
	fprintf(stderr, "usage: spawnbus [--n N] [--inflight K] [--fsync 0|1] "
			"[--start clone|posix_spawn] [--prog PATH] [--keep 0|1] [--label S] DIR\n");
	exit(2);
}

/* write a record atomically into folder f, made durable if `durable` and
 * fsync is on (see publish_at) */
static void publish(int f, const char *name, const char *buf, size_t len, int durable)
{
	const char *failed = publish_at(dfd[f], name, buf, len, durable && do_fsync);
	if (failed)
		die(failed, name);
}

/* what a cloned child needs until it execs: kept in its slot, which is not
 * reused before the child has ended */
struct child_args {
	int fds[3];
	char *prog;
	char **envp;
};

#define STACK_SIZE 65536

struct slot {
	pid_t pid;
	long task;
	int out, err; /* read ends */
	struct child_args ca;
	char *stack;
	char **envp;
	char env[4][4600];
};

/* the cloned child: it shares the parent's memory (errno included), so raw
 * system calls only, then the exec */
static int child_main(void *arg)
{
	struct child_args *a = arg;
	for (int to = 0; to < 3; to++)
		syscall(SYS_dup3, a->fds[to], to, 0);
	syscall(SYS_setpgid, 0, 0);
	unsigned long none = 0;
	syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, 8);
	char *argv[] = {a->prog, NULL};
	syscall(SYS_execve, a->prog, argv, a->envp);
	syscall(SYS_exit_group, 127);
	return 127;
}

static size_t task_record(long i, char *buf, size_t cap)
{
	return (size_t)snprintf(buf, cap,
				"{\"goal\":\"%s\",\"task\":\"t%05ld\",\"attempt\":1,"
				"\"needs\":[\"spawn\"],\"input\":{},\"deps\":{},"
				"\"created_at\":\"2026-01-01T00:00:00.000000Z\","
				"\"timeout\":\"10m\"}\n",
				goal, i);
}

static void start(struct slot *s, long i, const char *prog, const char *run)
{
	char claim[64], path[4400];
	snprintf(claim, sizeof claim, "%s.t%05ld.1.w4.json", goal, i);
	snprintf(path, sizeof path, "%s/claimed/%s", run, claim);
	int in = openat(dfd[F_CLAIMED], claim, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		die("open", claim);
	int op[2], ep[2];
	if (pipe2(op, O_CLOEXEC) != 0 || pipe2(ep, O_CLOEXEC) != 0)
		die("pipe", NULL);
	/* the record's paths and names, as a spawn worker's process gets them */
	snprintf(s->env[0], sizeof s->env[0], "WORKBUS_TASK_FILE=%s", path);
	snprintf(s->env[1], sizeof s->env[1], "WORKBUS_RESULT_FILE=%s/results/%s.t%05ld.1.json",
		 run, goal, i);
	snprintf(s->env[2], sizeof s->env[2], "WORKBUS_GOAL=%s", goal);
	snprintf(s->env[3], sizeof s->env[3], "WORKBUS_TASK=t%05ld", i);
	if (!s->envp) {
		size_t ne = 0;
		while (environ[ne])
			ne++;
		s->envp = malloc(sizeof(char *) * (ne + 6));
		if (!s->envp)
			die("malloc", NULL);
		memcpy(s->envp, environ, sizeof(char *) * ne);
		for (int q = 0; q < 4; q++)
			s->envp[ne + q] = s->env[q];
		s->envp[ne + 4] = "WORKBUS_ATTEMPT=1";
		s->envp[ne + 5] = NULL;
	}
	if (use_clone) {
		if (!s->stack) {
			s->stack = mmap(NULL, STACK_SIZE, PROT_READ | PROT_WRITE,
					MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
			if (s->stack == MAP_FAILED)
				die("mmap", NULL);
		}
		s->ca = (struct child_args){
			.fds = {in, op[1], ep[1]}, .prog = (char *)prog, .envp = s->envp};
		/* no handler of this process may run in the child */
		sigset_t all, old;
		sigfillset(&all);
		sigprocmask(SIG_SETMASK, &all, &old);
		s->pid = clone(child_main, s->stack + STACK_SIZE, CLONE_VM | SIGCHLD, &s->ca);
		int e = errno;
		sigprocmask(SIG_SETMASK, &old, NULL);
		if (s->pid < 0) {
			errno = e;
			die("clone", prog);
		}
	} else {
		posix_spawn_file_actions_t fa;
		posix_spawn_file_actions_init(&fa);
		posix_spawn_file_actions_adddup2(&fa, in, 0);
		posix_spawn_file_actions_adddup2(&fa, op[1], 1);
		posix_spawn_file_actions_adddup2(&fa, ep[1], 2);
		posix_spawnattr_t at;
		posix_spawnattr_init(&at);
		posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP);
		posix_spawnattr_setpgroup(&at, 0);
		char *argv[] = {(char *)prog, NULL};
		int rc = posix_spawn(&s->pid, prog, &fa, &at, argv, s->envp);
		if (rc != 0) {
			errno = rc;
			die("posix_spawn", prog);
		}
		posix_spawn_file_actions_destroy(&fa);
		posix_spawnattr_destroy(&at);
	}
	/* the child has its own table of descriptors */
	close(in);
	close(op[1]);
	close(ep[1]);
	s->task = i;
	s->out = op[0];
	s->err = ep[0];
}

/* reads a pipe to its end, keeping the first `cap` bytes in buf; returns
 * how many were kept */
static size_t drain(int fd, char *buf, size_t cap)
{
	size_t got = 0;
	for (;;) {
		char chunk[4096];
		ssize_t n = read(fd, chunk, sizeof chunk);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		size_t k = (size_t)n < cap - got ? (size_t)n : cap - got;
		memcpy(buf + got, chunk, k);
		got += k;
	}
	close(fd);
	return got;
}

/* CPU time of this process alone (all its threads), in s */
static double self_cpu_s(void)
{
	struct rusage s;
	getrusage(RUSAGE_SELF, &s);
	return s.ru_utime.tv_sec + s.ru_stime.tv_sec +
	       (s.ru_utime.tv_usec + s.ru_stime.tv_usec) / 1e6;
}

int main(int argc, char **argv)
{
	long n = 500, k = 4;
	int keep = 0;
	const char *prog = "/bin/true", *label = "", *dir = NULL;
	for (int i = 1; i < argc; i++) {
		const char *o = argv[i];
		if (o[0] != '-') {
			if (dir)
				usage();
			dir = o;
			continue;
		}
		if (i + 1 >= argc)
			usage();
		const char *v = argv[++i];
		if (!strcmp(o, "--n"))
			n = atol(v);
		else if (!strcmp(o, "--inflight"))
			k = atol(v);
		else if (!strcmp(o, "--fsync"))
			do_fsync = atoi(v) != 0;
		else if (!strcmp(o, "--start") && !strcmp(v, "clone"))
			use_clone = 1;
		else if (!strcmp(o, "--start") && !strcmp(v, "posix_spawn"))
			use_clone = 0;
		else if (!strcmp(o, "--prog"))
			prog = v;
		else if (!strcmp(o, "--keep"))
			keep = atoi(v) != 0;
		else if (!strcmp(o, "--label"))
			label = v;
		else
			usage();
	}
	if (!dir || n <= 0 || k <= 0 || n > 99999)
		usage();
	if (k > n)
		k = n;
	struct statfs sfs;
	if (statfs(dir, &sfs) != 0)
		die("statfs", dir);
	char fstype[32];
	fs_type_of(dir, fstype, sizeof fstype);

	char run[4200];
	const char *setup = make_run(dir, "spawnbus-", folders, F_N, dfd, run, sizeof run);
	if (setup)
		die(setup, run);
	/* the folders themselves are not what is measured, nor the write-back
	 * of what earlier runs left unsynced on this file system (syncfs, not
	 * sync: other file systems' dirty data is not waited for) */
	if (syncfs(dfd[0]) != 0)
		die("syncfs", run);
	struct slot *slots = calloc(k, sizeof *slots);
	if (!slots)
		die("malloc", NULL);

	unsigned long long d0 = run_delay_ns();
	double busy0 = machine_busy_s(), own0 = own_cpu_s(), self0 = self_cpu_s();
	double t0 = now_s();
	char goal_rec[256], name[64], claim[64];
	int gl = snprintf(goal_rec, sizeof goal_rec,
			  "{\"goal\":\"%s\",\"tasks\":\"spawn floor probe\"}\n", goal);
	snprintf(name, sizeof name, "%s.json", goal);
	publish(F_GOALS, name, goal_rec, gl, 0);
	/* the goal's tasks: the first K claimed at once, the rest queued */
	char rec[512];
	for (long i = 0; i < n; i++) {
		size_t len = task_record(i, rec, sizeof rec);
		if (i < k) {
			snprintf(claim, sizeof claim, "%s.t%05ld.1.w4.json", goal, i);
			publish(F_CLAIMED, claim, rec, len, 0);
		} else {
			snprintf(name, sizeof name, "%s.t%05ld.1.json", goal, i);
			publish(F_TASKS, name, rec, len, 0);
		}
	}
	long started = 0, running = 0, done = 0, failed = 0;
	for (; started < k; started++, running++)
		start(&slots[started], started, prog, run);
	while (done < n) {
		int status;
		pid_t pid = waitpid(-1, &status, 0); /* only our own children exist */
		if (pid < 0) {
			if (errno == EINTR)
				continue;
			die("waitpid", NULL);
		}
		struct slot *s = NULL;
		for (long j = 0; j < k; j++)
			if (slots[j].pid == pid)
				s = &slots[j];
		if (!s) {
			errno = ESRCH;
			die("a child that is not ours ended", NULL);
		}
		char out[2048], err[2048];
		size_t no = drain(s->out, out, sizeof out), ne = drain(s->err, err, sizeof err);
		int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
		failed += !ok;
		long i = s->task;
		/* what was read is only counted: the probe's record stays valid JSON
		 * whatever the program wrote */
		char res[512];
		int rl = ok ? snprintf(res, sizeof res,
				       "{\"goal\":\"%s\",\"task\":\"t%05ld\",\"attempt\":1,"
				       "\"status\":\"ok\",\"output\":{\"stdout_bytes\":%zu},"
				       "\"worker\":\"w4\"}\n",
				       goal, i, no)
			    : snprintf(res, sizeof res,
				       "{\"goal\":\"%s\",\"task\":\"t%05ld\",\"attempt\":1,"
				       "\"status\":\"error\",\"error\":\"wait status %d, %zu bytes "
				       "of stderr\",\"worker\":\"w4\"}\n",
				       goal, i, status, ne);
		snprintf(name, sizeof name, "%s.t%05ld.1.result.json", goal, i);
		publish(F_ARCHIVE, name, res, rl, 0);
		snprintf(claim, sizeof claim, "%s.t%05ld.1.w4.json", goal, i);
		char moved[80];
		snprintf(moved, sizeof moved, "%s.t%05ld.1.claim.json", goal, i);
		if (renameat(dfd[F_CLAIMED], claim, dfd[F_ARCHIVE], moved) != 0)
			die("archive", claim);
		done++;
		running--;
		if (started < n) {
			/* the claim: the queued record renamed into claimed/ */
			snprintf(name, sizeof name, "%s.t%05ld.1.json", goal, started);
			snprintf(claim, sizeof claim, "%s.t%05ld.1.w4.json", goal, started);
			if (renameat(dfd[F_TASKS], name, dfd[F_CLAIMED], claim) != 0)
				die("claim", name);
			start(s, started, prog, run);
			started++;
			running++;
		}
	}
	/* the goal and the results (and all else written) durable at once */
	if (do_fsync && syncfs(dfd[F_ARCHIVE]) != 0)
		die("syncfs", "archive");
	char report[256];
	int rl = snprintf(report, sizeof report, "{\"goal\":\"%s\",\"status\":\"%s\",\"tasks\":%ld}\n",
			  goal, failed ? "failed" : "succeeded", n);
	snprintf(name, sizeof name, "%s.json", goal);
	publish(F_REPORTS, name, report, rl, 1);
	double wall = now_s() - t0;
	double delay_ms = (run_delay_ns() - d0) / 1e6;
	double own = own_cpu_s() - own0, self = self_cpu_s() - self0,
	       busy = machine_busy_s() - busy0;
	double others = busy - own; /* ticks of 10 ms: coarse */
	if (others < 0)
		others = 0;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	long removed = keep ? 0 : empty_folders(dfd, F_N);

	printf("{\"probe\":\"spawnbus\",\"dir\":");
	json_str(dir);
	printf(",\"fs\":");
	json_str(fstype);
	printf(",\"fs_magic\":\"0x%lx\",\"fsync\":%s,\"start\":\"%s\",\"prog\":",
	       (unsigned long)sfs.f_type, do_fsync ? "true" : "false",
	       use_clone ? "clone" : "posix_spawn");
	json_str(prog);
	printf(",\"n\":%ld,\"inflight\":%ld,\"wall_s\":%.4f,\"tasks_per_s\":%.1f,"
	       "\"us_per_task\":%.1f,\"failed\":%ld,\"run_delay_ms\":%.1f,\"own_cpu_s\":%.3f,"
	       "\"self_cpu_s\":%.3f,\"others_cpu_pct\":%.1f",
	       n, k, wall, n / wall, wall / n * 1e6, failed, delay_ms, own, self,
	       100 * others / (ncpu * wall));
	printf(",\"run_dir\":");
	json_str(run);
	printf(",\"kept\":%s,\"cleanup_files\":%ld,\"label\":", keep ? "true" : "false", removed);
	json_str(label);
	printf("}\n");
	return failed ? 1 : 0;
}
