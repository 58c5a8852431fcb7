/*
 * chain.c -- the floor of W1 in shared WORKLOADS.md on a folder: the least a
 * chain of tasks can cost when it keeps to the bus's contract (every record
 * written atomically, the accepted goal, each result and the report made
 * durable with an fsync of the file and of its folder; shared folders;
 * separate processes woken by inotify), with nothing else: no parsing, no
 * scheduling, no state, no logging.
 *
 *   chain [--goals N] [--hops H] [--warmup N] [--fsync 0|1] [--label S] DIR
 *
 *   N        goals measured, one after another (default 30)
 *   H        tasks in each goal's chain (default 3, as W1)
 *   warmup   goals run first and not counted (default 2)
 *   fsync    1 (default): the writes the contract makes durable are
 *            fdatasynced and their folders fsynced; 0: nothing is
 *
 * The processes, each blocked in read() on its own inotify descriptor
 * (IN_MOVED_TO only) whenever it waits:
 *   submitter (this process): writes the goal beside the bus (fdatasynced,
 *     as wb-bench does), t0, renames it into inbox/, waits for its report in
 *     reports/, reads it, t1;
 *   conductor: on a goal in inbox/: reads it, publishes task 1 (a file
 *     written under a dot-name in tasks/ and renamed in; tasks are derived
 *     state, not fsynced) and hands the goal to its second thread, which
 *     writes it to goals/ (fdatasync, rename, fsync goals/) and then moves
 *     the dropped file out of inbox/; on a result in results/: reads it and
 *     publishes the next task or, after the last, waits until the goal is
 *     durable, writes the report (fdatasync, rename, then fsync reports/:
 *     the submitter is woken by the rename);
 *   H workers, one per task of the chain (as W1's capabilities), all
 *     watching tasks/: the one whose task appeared claims it (a rename into
 *     claimed/), reads it, writes its result (fdatasync, rename into
 *     results/, fsync results/); the others go back to sleep.
 * The workers' folder fsyncs, the goal's durability and the report's folder
 * fsync lie off the goal's path, as the contract allows, but the disk serves
 * them in between; so on a disk whose cache flush is slow, the floor is more
 * than the flushes on the path.
 *
 * Output: one JSON line: every latency in ms, median (mean of the two middle
 * values for an even count), p90 (nearest rank), max, the median per hop
 * (median / H), the block device's counters over the measured goals
 * ("dev": flushes and the milliseconds they took: flush_ms / flushes is the
 * device's flush latency, flushes / goals what a goal cost it), and the CPU
 * and run delay (time runnable but waiting for a CPU) of all the processes
 * together (the chain's own processes wait for each other: three workers
 * woken at once on two CPUs), and "others_cpu_pct": the share of the
 * machine's CPU time used meanwhile by everything else (10 ms ticks).
 *
 * Works in DIR/.workbus-limits/chain-<pid>-<ns> (see publish.c for why
 * there, and why the emptied run directories are kept for 10 minutes).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "probe.h"

#define EXT4_MAGIC 0xEF53
#define MAX_HOPS 16

static const char *folders[] = {"stage", "inbox", "goals", "tasks", "claimed", "results",
				"reports", "archive"};
enum { F_STAGE, F_INBOX, F_GOALS, F_TASKS, F_CLAIMED, F_RESULTS, F_REPORTS, F_ARCHIVE, F_N };

/* a goal whose report has not come after this long fails the probe (a
 * helper process died, or the disk stalled) */
#define REPORT_TIMEOUT_MS 30000

static int dfd[F_N];
static int do_fsync = 1;
static int hops = 3;
static char devstat_path[128];

static void die(const char *what, const char *arg)
{
	fprintf(stderr, "chain: %s %s: %s\n", what, arg ? arg : "", strerror(errno));
	exit(1);
}

static void usage(void)
{
	fprintf(stderr, "usage: chain [--goals N] [--hops H] [--warmup N] [--fsync 0|1] "
			"[--label S] DIR\n");
	exit(2);
}

/* ----- the record operations ------------------------------------------- */

/* write a record atomically into folder f; `durable` says whether the
 * contract asks for it to be made durable (see publish_at) */
static void publish(int f, const char *name, const char *buf, size_t len, int durable)
{
	const char *failed = publish_at(dfd[f], name, buf, len, durable && do_fsync);
	if (failed)
		die(failed, name);
}

/* read a small record whole into buf (NUL-terminated); returns its length */
static size_t slurp(int f, const char *name, char *buf, size_t cap)
{
	int fd = openat(dfd[f], name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("open", name);
	ssize_t n = read(fd, buf, cap - 1);
	if (n < 0)
		die("read", name);
	close(fd);
	buf[n] = 0;
	return (size_t)n;
}

/* an inotify descriptor that reports names renamed into the given folders */
static int watch(const int *fs, int n, int *wds)
{
	int in = inotify_init1(IN_CLOEXEC);
	if (in < 0)
		die("inotify_init1", NULL);
	for (int i = 0; i < n; i++) {
		char path[32];
		snprintf(path, sizeof path, "/proc/self/fd/%d", dfd[fs[i]]);
		wds[i] = inotify_add_watch(in, path, IN_MOVED_TO | IN_ONLYDIR);
		if (wds[i] < 0)
			die("inotify_add_watch", folders[fs[i]]);
	}
	return in;
}

/* blocks for the next batch of events; calls fn(folder index, name) for each */
static void next_events(int in, const int *wds, int n, void (*fn)(int, const char *))
{
	char ev[64 * (sizeof(struct inotify_event) + NAME_MAX + 1)]
		__attribute__((aligned(__alignof__(struct inotify_event))));
	ssize_t len = read(in, ev, sizeof ev);
	if (len < 0) {
		if (errno == EINTR)
			return;
		die("read inotify", NULL);
	}
	for (char *p = ev; p < ev + len;) {
		struct inotify_event *e = (struct inotify_event *)p;
		p += sizeof *e + e->len;
		if (!e->len || e->name[0] == '.')
			continue;
		for (int i = 0; i < n; i++)
			if (wds[i] == e->wd)
				fn(i, e->name);
	}
}

/* ----- the conductor --------------------------------------------------- */

struct goalq {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	char pending[64];      /* a goal to make durable ("" if none) */
	char pending_body[512];
	char durable[64];      /* the last goal made durable */
};
static struct goalq gq = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, "", "", ""};

static void *durability_thread(void *arg)
{
	(void)arg;
	for (;;) {
		char name[64], body[512];
		pthread_mutex_lock(&gq.mu);
		while (!gq.pending[0])
			pthread_cond_wait(&gq.cv, &gq.mu);
		memcpy(name, gq.pending, sizeof name);
		memcpy(body, gq.pending_body, sizeof body);
		pthread_mutex_unlock(&gq.mu);
		publish(F_GOALS, name, body, strlen(body), 1);
		/* durable: the dropped file leaves inbox/ */
		if (renameat(dfd[F_INBOX], name, dfd[F_ARCHIVE], name) != 0)
			die("rename inbox ->archive", name);
		pthread_mutex_lock(&gq.mu);
		memcpy(gq.durable, name, sizeof name);
		gq.pending[0] = 0;
		pthread_cond_broadcast(&gq.cv);
		pthread_mutex_unlock(&gq.mu);
	}
	return NULL;
}

/* names: goal "g00001.json", task/result "g00001.2.json" (hop 2), report
 * "g00001.json" */
static void conductor_event(int which, const char *name)
{
	char body[512], out[600], goal[16];
	if (which == 0) { /* inbox/ */
		slurp(F_INBOX, name, body, sizeof body);
		if (sscanf(name, "%15[^.]", goal) != 1)
			return;
		snprintf(out, sizeof out, "%s.1.json", goal);
		publish(F_TASKS, out, body, strlen(body), 0);
		pthread_mutex_lock(&gq.mu);
		while (gq.pending[0]) /* one goal at a time: the last is long durable */
			pthread_cond_wait(&gq.cv, &gq.mu);
		snprintf(gq.pending, sizeof gq.pending, "%s", name);
		snprintf(gq.pending_body, sizeof gq.pending_body, "%s", body);
		pthread_cond_broadcast(&gq.cv);
		pthread_mutex_unlock(&gq.mu);
		return;
	}
	/* results/ */
	int hop;
	if (sscanf(name, "%15[^.].%d.json", goal, &hop) != 2)
		return;
	size_t n = slurp(F_RESULTS, name, body, sizeof body);
	if (hop < hops) {
		snprintf(out, sizeof out, "%s.%d.json", goal, hop + 1);
		publish(F_TASKS, out, body, n, 0);
		return;
	}
	char gname[64];
	snprintf(gname, sizeof gname, "%s.json", goal);
	pthread_mutex_lock(&gq.mu);
	while (strcmp(gq.durable, gname) != 0)
		pthread_cond_wait(&gq.cv, &gq.mu);
	pthread_mutex_unlock(&gq.mu);
	publish(F_REPORTS, gname, body, n, 1);
}

static void conductor(int ready)
{
	pthread_t t;
	if (pthread_create(&t, NULL, durability_thread, NULL) != 0)
		die("pthread_create", NULL);
	int fs[2] = {F_INBOX, F_RESULTS}, wds[2];
	int in = watch(fs, 2, wds);
	if (write(ready, "c", 1) != 1)
		die("write ready", NULL);
	for (;;)
		next_events(in, wds, 2, conductor_event);
}

/* ----- a worker -------------------------------------------------------- */

static int my_hop;

static void worker_event(int which, const char *name)
{
	(void)which;
	char goal[16], body[512];
	int hop;
	if (sscanf(name, "%15[^.].%d.json", goal, &hop) != 2 || hop != my_hop)
		return;
	/* the claim: the task moves to claimed/ */
	if (renameat(dfd[F_TASKS], name, dfd[F_CLAIMED], name) != 0)
		die("claim", name);
	size_t n = slurp(F_CLAIMED, name, body, sizeof body);
	publish(F_RESULTS, name, body, n, 1);
}

static void worker(int hop, int ready)
{
	my_hop = hop;
	int fs[1] = {F_TASKS}, wds[1];
	int in = watch(fs, 1, wds);
	if (write(ready, "w", 1) != 1)
		die("write ready", NULL);
	for (;;)
		next_events(in, wds, 1, worker_event);
}

/* ----- measuring ------------------------------------------------------- */

/* CPU time and run delay in ns of every thread of pid */
static void sched_of(pid_t pid, unsigned long long *cpu, unsigned long long *delay)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
	DIR *d = opendir(path);
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		char p[300];
		snprintf(p, sizeof p, "/proc/%d/task/%s/schedstat", (int)pid, e->d_name);
		FILE *f = fopen(p, "r");
		unsigned long long c = 0, w = 0;
		if (f) {
			if (fscanf(f, "%llu %llu", &c, &w) == 2) {
				*cpu += c;
				*delay += w;
			}
			fclose(f);
		}
	}
	closedir(d);
}

static void sched_all(const pid_t *pids, int n, unsigned long long *cpu, unsigned long long *delay)
{
	*cpu = *delay = 0;
	sched_of(getpid(), cpu, delay);
	for (int i = 0; i < n; i++)
		sched_of(pids[i], cpu, delay);
}

/* the helper processes (conductor, workers), stopped and reaped at exit */
static pid_t pids[MAX_HOPS + 1];
static int nproc;

static void kill_helpers(void)
{
	for (int i = 0; i < nproc; i++)
		kill(pids[i], SIGKILL);
	for (int i = 0; i < nproc; i++)
		waitpid(pids[i], NULL, 0);
	nproc = 0;
}

int main(int argc, char **argv)
{
	int goals = 30, warmup = 2;
	const char *label = "";
	int ai = 1;
	for (; ai < argc && !strncmp(argv[ai], "--", 2); ai += 2) {
		if (ai + 1 >= argc)
			usage();
		if (!strcmp(argv[ai], "--goals"))
			goals = atoi(argv[ai + 1]);
		else if (!strcmp(argv[ai], "--hops"))
			hops = atoi(argv[ai + 1]);
		else if (!strcmp(argv[ai], "--warmup"))
			warmup = atoi(argv[ai + 1]);
		else if (!strcmp(argv[ai], "--fsync"))
			do_fsync = atoi(argv[ai + 1]);
		else if (!strcmp(argv[ai], "--label"))
			label = argv[ai + 1];
		else
			usage();
	}
	if (argc - ai != 1 || goals < 1 || hops < 1 || hops > MAX_HOPS || warmup < 0)
		usage();
	const char *dir = argv[ai];

	char fstype[64];
	fs_type_of(dir, fstype, sizeof fstype);
	struct statfs sfs;
	if (statfs(dir, &sfs) != 0)
		die("statfs", dir);
	struct stat dst;
	if (stat(dir, &dst) != 0)
		die("stat", dir);
	if (major(dst.st_dev) != 0)
		snprintf(devstat_path, sizeof devstat_path, "/sys/dev/block/%u:%u/stat",
			 major(dst.st_dev), minor(dst.st_dev));

	char run[4200];
	const char *failed = make_run(dir, "chain-", folders, F_N, dfd, run, sizeof run);
	if (failed)
		die(failed, run);
	if (do_fsync)
		sync(); /* the folders themselves are not what is measured */

	int rp[2];
	if (pipe2(rp, O_CLOEXEC) != 0)
		die("pipe", NULL);
	atexit(kill_helpers); /* whichever way this process ends */
	pid_t parent = getpid();
	for (int i = 0; i <= hops; i++) {
		pid_t p = fork();
		if (p < 0)
			die("fork", NULL);
		if (p == 0) {
			/* nor do they outlive it */
			if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
				_exit(1);
			close(rp[0]);
			if (i == 0)
				conductor(rp[1]);
			else
				worker(i, rp[1]);
			_exit(0);
		}
		pids[nproc++] = p;
	}
	close(rp[1]);
	for (int i = 0; i <= hops; i++) {
		char c;
		if (read(rp[0], &c, 1) != 1) {
			errno = EPIPE;
			die("a helper process did not start", NULL);
		}
	}

	int wds[1], fs[1] = {F_REPORTS};
	int in = watch(fs, 1, wds);
	int total = warmup + goals;
	double *lat = malloc(sizeof(double) * goals);
	if (!lat)
		die("malloc", NULL);
	struct devstat d0 = {0};
	unsigned long long cpu0 = 0, delay0 = 0;
	double m0 = 0, busy0 = 0;
	for (int k = 0; k < total; k++) {
		if (k == warmup) {
			d0 = devstat_read(devstat_path);
			sched_all(pids, nproc, &cpu0, &delay0);
			busy0 = machine_busy_s();
			m0 = now_s();
		}
		char name[64], body[256], got[512];
		snprintf(name, sizeof name, "g%05d.json", k);
		int n = snprintf(body, sizeof body,
				 "{\"goal\":\"g%05d\",\"payload\":\"chain floor probe, goal %d\"}\n", k,
				 k);
		/* staged beside the bus before the clock starts */
		int fd = openat(dfd[F_STAGE], name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd < 0 || write(fd, body, n) != n || (do_fsync && fdatasync(fd) != 0) ||
		    close(fd) != 0)
			die("stage", name);
		double t0 = now_s();
		if (renameat(dfd[F_STAGE], name, dfd[F_INBOX], name) != 0)
			die("submit", name);
		for (;;) {
			char ev[8 * (sizeof(struct inotify_event) + NAME_MAX + 1)]
				__attribute__((aligned(__alignof__(struct inotify_event))));
			struct pollfd pfd = {.fd = in, .events = POLLIN};
			int ready = poll(&pfd, 1, REPORT_TIMEOUT_MS);
			if (ready < 0 && errno == EINTR)
				continue;
			if (ready == 0) {
				errno = ETIMEDOUT;
				die("no report within 30 s for", name);
			}
			ssize_t len = read(in, ev, sizeof ev);
			if (len < 0 && errno == EINTR)
				continue;
			if (len <= 0)
				die("read inotify", NULL);
			int seen = 0;
			for (char *p = ev; p < ev + len;) {
				struct inotify_event *e = (struct inotify_event *)p;
				p += sizeof *e + e->len;
				if (e->len && !strcmp(e->name, name))
					seen = 1;
			}
			if (seen)
				break;
		}
		slurp(F_REPORTS, name, got, sizeof got);
		double t1 = now_s();
		if (strcmp(got, body) != 0) {
			errno = EINVAL;
			die("the report is not the goal's payload:", got);
		}
		if (k >= warmup)
			lat[k - warmup] = (t1 - t0) * 1e3;
	}
	double seconds = now_s() - m0;
	unsigned long long cpu1, delay1;
	sched_all(pids, nproc, &cpu1, &delay1);
	double busy = machine_busy_s() - busy0;
	/* what others used of the machine meanwhile (10 ms ticks: coarse) */
	double others = busy - (cpu1 - cpu0) / 1e9;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	double others_pct = seconds > 0 && ncpu > 0 ? 100 * others / (seconds * ncpu) : 0;
	if (others_pct < 0)
		others_pct = 0;
	struct devstat d1 = devstat_read(devstat_path);
	kill_helpers();
	long removed = empty_folders(dfd, F_N);

	double *sorted = malloc(sizeof(double) * goals);
	if (!sorted)
		die("malloc", NULL);
	memcpy(sorted, lat, sizeof(double) * goals);
	qsort(sorted, goals, sizeof(double), cmp_double);
	double median = goals % 2 ? sorted[goals / 2]
				  : (sorted[goals / 2 - 1] + sorted[goals / 2]) / 2;
	int rank = (9 * goals + 9) / 10; /* ceil(0.9 n) */
	double p90 = sorted[rank - 1], mx = sorted[goals - 1];

	printf("{\"probe\":\"chain\",\"dir\":");
	json_str(dir);
	printf(",\"fs\":");
	json_str(fstype);
	printf(",\"fs_magic\":\"0x%lx\",\"fsync\":%s,\"goals\":%d,\"hops\":%d,\"warmup\":%d",
	       (unsigned long)sfs.f_type, do_fsync ? "true" : "false", goals, hops, warmup);
	printf(",\"seconds\":%.4f,\"lat_ms\":[", seconds);
	for (int i = 0; i < goals; i++)
		printf("%s%.3f", i ? "," : "", lat[i]);
	printf("],\"lat_ms_median\":%.3f,\"lat_ms_p90\":%.3f,\"lat_ms_max\":%.3f", median, p90,
	       mx);
	printf(",\"per_hop_ms_median\":%.4f", median / hops);
	printf(",\"cpu_ms\":%.1f,\"run_delay_ms\":%.1f,\"others_cpu_pct\":%.1f",
	       (cpu1 - cpu0) / 1e6, (delay1 - delay0) / 1e6, others_pct);
	if (d0.ok && d1.ok)
		printf(",\"dev\":{\"write_ios\":%llu,\"flushes\":%llu,\"flush_ms\":%llu}",
		       d1.wr_ios - d0.wr_ios, d1.flushes - d0.flushes, d1.flush_ms - d0.flush_ms);
	printf(",\"run_dir\":");
	json_str(run);
	printf(",\"cleanup_files\":%ld,\"label\":", removed);
	json_str(label);
	printf("}\n");
	return 0;
}
