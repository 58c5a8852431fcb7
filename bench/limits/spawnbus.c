/*
 * spawnbus.c -- the floor of W4 in shared WORKLOADS.md on a folder: the least
 * a goal of N process-per-task tasks can cost when it keeps to the bus's
 * contract for a spawn worker, with nothing else: no parsing, no scheduling
 * state, no logging, no status. Where spawn.c measures /bin/true alone, this
 * adds the files the contract asks of each task and the plumbing of its
 * process, so W4's distance from the raw rate splits into what the contract
 * costs on this folder and what the daemon adds to it.
 *
 *   spawnbus [--n N] [--inflight K] [--fsync 0|1] [--prog PATH] [--keep 0|1]
 *            [--label S] DIR
 *
 *   N        tasks of the goal (default 500)
 *   K        processes running at once (default 4, as W4's worker)
 *   fsync    1 (default): the accepted goal, each result and the report are
 *            fdatasynced and their folders fsynced; 0: nothing is
 *   keep     1: leave the run's files for the caller to remove (the path is
 *            in "run_dir"); 0 (default): remove them before printing
 *
 * One process, as the daemon is, with a second thread for the fsyncs. After
 * t0, for the goal: its record written durably to goals/ (on the fsync
 * thread, first in its queue); the first K task records written straight into
 * claimed/ (published and claimed at once), the other N-K published in tasks/
 * (queued: the record in tasks/, SPEC's lifecycle; derived state, not
 * fsynced). Per task, when a slot is free: the claim (a rename from tasks/
 * into claimed/), its process started with posix_spawn in a process group of
 * its own, the claimed record on stdin, stdout and stderr on pipes, the
 * record's paths in its environment; when it has ended (waitpid): both pipes
 * read to their end, its exit status checked, the result record written
 * into the goal's archive folder (queued for the fsync thread, which makes
 * what is queued durable at once: a lone result with fdatasync and an fsync
 * of the folder, several with one syncfs) and the claim moved there too. The
 * report is written (fdatasync, rename, fsync of reports/) once every result
 * is durable; t1 after that.
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
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "probe.h"

extern char **environ;

static const char *folders[] = {"goals", "tasks", "claimed", "archive", "reports"};
enum { F_GOALS, F_TASKS, F_CLAIMED, F_ARCHIVE, F_REPORTS, F_N };

static int dfd[F_N];
static int do_fsync = 1;
static const char *goal = "w4-floor";

static void die(const char *what, const char *arg)
{
	fprintf(stderr, "spawnbus: %s %s: %s\n", what, arg ? arg : "", strerror(errno));
	exit(1);
}

static void usage(void)
{
	fprintf(stderr, "usage: spawnbus [--n N] [--inflight K] [--fsync 0|1] [--prog PATH] "
			"[--keep 0|1] [--label S] DIR\n");
	exit(2);
}

/* write a record atomically into folder f: a dot-name, [fdatasync], rename,
 * [fsync of the folder] */
static void publish(int f, const char *name, const char *buf, size_t len, int durable)
{
	char tmp[NAME_MAX + 1];
	snprintf(tmp, sizeof tmp, ".%s.tmp", name);
	int fd = openat(dfd[f], tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		die("create", tmp);
	if (write(fd, buf, len) != (ssize_t)len)
		die("write", tmp);
	if (durable && do_fsync && fdatasync(fd) != 0)
		die("fdatasync", tmp);
	if (close(fd) != 0)
		die("close", tmp);
	if (renameat(dfd[f], tmp, dfd[f], name) != 0)
		die("rename", tmp);
	if (durable && do_fsync && fsync(dfd[f]) != 0)
		die("fsync", folders[f]);
}

/* ----- the fsync thread: the accepted goal first, then results ---------- */

#define JOB_GOAL (-1)

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int *queue;       /* task numbers whose result waits for its fsync */
static long queued, taken; /* queue[taken..queued) waits */
static long durable;      /* results made durable */
static int goal_job, stop_syncer;

static void sync_result(long i)
{
	char name[64];
	snprintf(name, sizeof name, "%s.t%05ld.1.result.json", goal, i);
	int fd = openat(dfd[F_ARCHIVE], name, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fdatasync(fd) != 0)
		die("fdatasync", name);
	close(fd);
}

/* one job at a time: the goal when asked, else every result queued so far */
static void *syncer(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&mu);
	for (;;) {
		while (!goal_job && taken == queued && !stop_syncer)
			pthread_cond_wait(&cv, &mu);
		if (goal_job) {
			goal_job = 0;
			pthread_mutex_unlock(&mu);
			char body[256];
			int n = snprintf(body, sizeof body,
					 "{\"goal\":\"%s\",\"tasks\":\"spawn floor probe\"}\n", goal);
			char name[64];
			snprintf(name, sizeof name, "%s.json", goal);
			publish(F_GOALS, name, body, n, 1);
			pthread_mutex_lock(&mu);
			continue;
		}
		if (taken == queued)
			break; /* stop_syncer, nothing left */
		long from = taken, to = queued;
		taken = to;
		pthread_mutex_unlock(&mu);
		if (to - from == 1) {
			sync_result(queue[from]);
			if (fsync(dfd[F_ARCHIVE]) != 0)
				die("fsync", "archive");
		} else if (syncfs(dfd[F_ARCHIVE]) != 0) {
			die("syncfs", "archive");
		}
		pthread_mutex_lock(&mu);
		durable += to - from;
		pthread_cond_broadcast(&cv);
	}
	pthread_mutex_unlock(&mu);
	return NULL;
}

/* ----- one task's process ------------------------------------------------ */

struct slot {
	pid_t pid;
	long task;
	int out, err; /* read ends */
};

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
	char claim[64], path[4400], env_task[4500], env_result[4500], env_goal[128], env_task_id[64];
	snprintf(claim, sizeof claim, "%s.t%05ld.1.w4.json", goal, i);
	snprintf(path, sizeof path, "%s/claimed/%s", run, claim);
	int in = openat(dfd[F_CLAIMED], claim, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		die("open", claim);
	int op[2], ep[2];
	if (pipe2(op, O_CLOEXEC) != 0 || pipe2(ep, O_CLOEXEC) != 0)
		die("pipe", NULL);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, in, 0);
	posix_spawn_file_actions_adddup2(&fa, op[1], 1);
	posix_spawn_file_actions_adddup2(&fa, ep[1], 2);
	posix_spawnattr_t at;
	posix_spawnattr_init(&at);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP);
	posix_spawnattr_setpgroup(&at, 0);
	/* the record's paths and names, as a spawn worker's process gets them */
	snprintf(env_task, sizeof env_task, "WORKBUS_TASK_FILE=%s", path);
	snprintf(env_result, sizeof env_result, "WORKBUS_RESULT_FILE=%s/results/%s.t%05ld.1.json",
		 run, goal, i);
	snprintf(env_goal, sizeof env_goal, "WORKBUS_GOAL=%s", goal);
	snprintf(env_task_id, sizeof env_task_id, "WORKBUS_TASK=t%05ld", i);
	size_t ne = 0;
	while (environ[ne])
		ne++;
	char **envp = malloc(sizeof(char *) * (ne + 6));
	if (!envp)
		die("malloc", NULL);
	memcpy(envp, environ, sizeof(char *) * ne);
	envp[ne++] = env_task;
	envp[ne++] = env_result;
	envp[ne++] = env_goal;
	envp[ne++] = env_task_id;
	envp[ne++] = "WORKBUS_ATTEMPT=1";
	envp[ne] = NULL;
	char *argv[] = {(char *)prog, NULL};
	int rc = posix_spawn(&s->pid, prog, &fa, &at, argv, envp);
	if (rc != 0) {
		errno = rc;
		die("posix_spawn", prog);
	}
	free(envp);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	close(in);
	close(op[1]);
	close(ep[1]);
	s->task = i;
	s->out = op[0];
	s->err = ep[0];
}

/* reads a pipe to its end; returns the bytes read (kept: the last 2 KiB) */
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

/* CPU time of this process (all threads) and of its reaped children, in s */
static double own_cpu_s(void)
{
	struct rusage s, c;
	getrusage(RUSAGE_SELF, &s);
	getrusage(RUSAGE_CHILDREN, &c);
	return s.ru_utime.tv_sec + s.ru_stime.tv_sec + c.ru_utime.tv_sec + c.ru_stime.tv_sec +
	       (s.ru_utime.tv_usec + s.ru_stime.tv_usec + c.ru_utime.tv_usec + c.ru_stime.tv_usec) / 1e6;
}

static double self_cpu_s(void)
{
	struct rusage s;
	getrusage(RUSAGE_SELF, &s);
	return s.ru_utime.tv_sec + s.ru_stime.tv_sec +
	       (s.ru_utime.tv_usec + s.ru_stime.tv_usec) / 1e6;
}

static unsigned long long run_delay_ns(void)
{
	unsigned long long cpu = 0, delay = 0;
	FILE *f = fopen("/proc/thread-self/schedstat", "r");
	if (f) {
		if (fscanf(f, "%llu %llu", &cpu, &delay) != 2)
			delay = 0;
		fclose(f);
	}
	return delay;
}

static long empty_run(void)
{
	long n = 0;
	for (int f = 0; f < F_N; f++) {
		DIR *d = fdopendir(dup(dfd[f]));
		if (!d)
			continue;
		struct dirent *e;
		while ((e = readdir(d)) != NULL)
			if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
				n += unlinkat(dfd[f], e->d_name, 0) == 0;
		closedir(d);
	}
	return n;
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

	char base[4096], run[4200];
	if (limits_base(dir, base, sizeof base) != 0)
		die("making the probes' folder under", dir);
	remove_stale(base, "spawnbus-", folders, F_N);
	struct timespec rt;
	clock_gettime(CLOCK_REALTIME, &rt);
	snprintf(run, sizeof run, "%s/spawnbus-%d-%lld%09ld", base, (int)getpid(),
		 (long long)rt.tv_sec, rt.tv_nsec);
	if (mkdir(run, 0755) != 0)
		die("mkdir", run);
	for (int f = 0; f < F_N; f++) {
		char p[4400];
		snprintf(p, sizeof p, "%s/%s", run, folders[f]);
		if (mkdir(p, 0755) != 0)
			die("mkdir", p);
		dfd[f] = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd[f] < 0)
			die("open", p);
	}
	if (do_fsync)
		sync(); /* the folders themselves are not what is measured */
	queue = malloc(sizeof(int) * n);
	struct slot *slots = calloc(k, sizeof *slots);
	if (!queue || !slots)
		die("malloc", NULL);
	pthread_t th;
	if (do_fsync && pthread_create(&th, NULL, syncer, NULL) != 0)
		die("pthread_create", NULL);

	unsigned long long d0 = run_delay_ns();
	double busy0 = machine_busy_s(), own0 = own_cpu_s(), self0 = self_cpu_s();
	double t0 = now_s();
	if (do_fsync) {
		pthread_mutex_lock(&mu);
		goal_job = 1;
		pthread_cond_signal(&cv);
		pthread_mutex_unlock(&mu);
	}
	/* the goal's tasks: the first K claimed at once, the rest queued */
	char rec[512], name[64], claim[64];
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
		char res[512];
		int rl = snprintf(res, sizeof res,
				  "{\"goal\":\"%s\",\"task\":\"t%05ld\",\"attempt\":1,\"status\":\"%s\","
				  "\"output\":\"%.*s\",\"worker\":\"w4\"}\n",
				  goal, i, ok ? "ok" : "error", ok ? (int)(no > 64 ? 64 : no) : 0,
				  out);
		(void)ne;
		snprintf(name, sizeof name, "%s.t%05ld.1.result.json", goal, i);
		publish(F_ARCHIVE, name, res, rl, 0);
		if (do_fsync) {
			pthread_mutex_lock(&mu);
			queue[queued++] = (int)i;
			pthread_cond_signal(&cv);
			pthread_mutex_unlock(&mu);
		}
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
	if (do_fsync) {
		pthread_mutex_lock(&mu);
		while (durable < n || goal_job)
			pthread_cond_wait(&cv, &mu);
		stop_syncer = 1;
		pthread_cond_signal(&cv);
		pthread_mutex_unlock(&mu);
		pthread_join(th, NULL);
	}
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
	long removed = keep ? 0 : empty_run();

	printf("{\"probe\":\"spawnbus\",\"dir\":");
	json_str(dir);
	printf(",\"fs\":");
	json_str(fstype);
	printf(",\"fs_magic\":\"0x%lx\",\"fsync\":%s,\"prog\":", (unsigned long)sfs.f_type,
	       do_fsync ? "true" : "false");
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
