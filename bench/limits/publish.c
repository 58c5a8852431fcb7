/*
 * publish.c -- workload "L" of shared WORKLOADS.md: the physical limit of an
 * atomic publish (write a temp file, rename it to its final name) in a folder.
 *
 *   publish [options] DIR MODE SECONDS [MAX_OPS]
 *
 *   MODE     none | file | dir | file+dir   (which fsyncs each op does)
 *   SECONDS  measuring time; the loop stops at SECONDS or MAX_OPS (default 20000)
 *
 * op i = open("t<i>.task.tmp", O_WRONLY|O_CREAT|O_TRUNC), write 256 bytes,
 *        [fsync(file)], close, renameat("t<i>.task.tmp" -> "t<i>.task.json"),
 *        [fsync(dir)]                      -- a new name every op, as a bus does.
 * The latency of an op is the time from the end of the previous op to its end.
 *
 * Options:
 *   --state S     clean   (default) the published files are kept;
 *                 churned just before measuring, CHURN files are created (256
 *                         bytes each) and unlinked in the measuring directory;
 *                 steady  each op also unlinks the file published LAG ops
 *                         earlier (inside the op's timing).
 *   --churn N     files created+unlinked for "churned" (default 20000)
 *   --no-churn-wait  start measuring at once after the churn; by default the
 *                 program first waits for the next wall-clock second (at most
 *                 1 s), because ext4 stamps a deleted inode with the second of
 *                 its deletion and treats it as "recently deleted" only from
 *                 the next second on: measured within the same second, the
 *                 churned state looks clean (see README.md).
 *   --lag N       distance of the unlink in "steady" (default 64)
 *   --size N      bytes written per op (default 256)
 *   --series K --every S
 *                 measure K times in the same directory, the k-th burst
 *                 starting k*S seconds after the first one (after the churn,
 *                 for "churned"): shows how long a state lasts. One JSON line
 *                 per burst, with "burst" and "since_start_s".
 *   --cleanup C   files (default) at the end, unlink the files of the run
 *                         directory; on ext4 keep the emptied directory itself
 *                         (see below); a later run rmdirs such empty run
 *                         directories once they are 10 minutes old;
 *                 all     unlink the files and rmdir the run directory;
 *                 keep    leave everything (the path is in the JSON line).
 *   --no-spread   make the run directory directly in DIR (see below)
 *   --label S     free text copied into the JSON line
 *
 * Output: one JSON line per measurement on stdout: ops/s, median (mean of the
 * two middle values for an even count), p90 (nearest rank) and max latency in
 * microseconds, mode, state, dir, file-system type, where it ran, and "dev":
 * what the block device under DIR did meanwhile (write requests, MB written,
 * flushes and the milliseconds they took, discards), counted for every
 * process: more than this program's own share means someone else was
 * writing, and flush_ms/flushes is the device's flush latency; "cpu_ms" and
 * "run_delay_ms": this program's CPU time and its time spent waiting for a
 * CPU while runnable -- a run delay much above zero means other processes
 * competed for the CPUs, and every op that slept (an fsync) paid for it.
 *
 * Where the run directory goes, and why (this machine's ext4 has no journal):
 * in no-journal mode ext4 will not reuse an inode freed less than 60 s ago
 * (360 s while its inode-table block is still dirty), see recently_deleted()
 * in fs/ext4/ialloc.c; a file's inode is taken from the first block group of
 * its directory's flex group that has free inodes, so after
 * a mass deletion the creates of every directory in that flex group pay for
 * stepping over the recently freed inodes, until they age.  To keep its own
 * churn, steady-state unlinks and cleanup away from the folder that other
 * measurements (and the bus) use, this program works under
 * DIR/.workbus-limits, marked "top of directory hierarchy" (chattr +T,
 * FS_TOPDIR_FL), so that ext4's Orlov allocator puts each run directory in the
 * flex group with the fewest directories (in practice an empty one, far from
 * DIR's).  Emptied run directories are kept for 10 minutes so that their flex
 * group still counts a directory and is not picked again while it is
 * poisoned.  On tmpfs none of this matters (the flag is refused, silently).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "probe.h"

#define EXT4_MAGIC 0xEF53

enum mode { M_NONE, M_FILE, M_DIR, M_FILEDIR };
enum state { S_CLEAN, S_CHURNED, S_STEADY };
enum cleanup { CL_FILES, CL_ALL, CL_KEEP };

static const char *mode_names[] = {"none", "file", "dir", "file+dir"};
static const char *state_names[] = {"clean", "churned", "steady"};
static const char *cleanup_names[] = {"files", "all", "keep"};

struct result {
	long ops;
	double seconds, median, p90, max;
	unsigned long long first_ino;
	struct devstat dev; /* deltas over the measurement */
	double cpu_ms, run_delay_ms; /* this thread's CPU time and runqueue wait */
};

static char devstat_path[128];

static void die(const char *what, const char *arg)
{
	fprintf(stderr, "publish: %s %s: %s\n", what, arg ? arg : "", strerror(errno));
	exit(1);
}

static void usage(void)
{
	fprintf(stderr,
		"usage: publish [--state clean|churned|steady] [--churn N] [--no-churn-wait]\n"
		"               [--lag N] [--size N]\n"
		"               [--series K --every S] [--cleanup files|all|keep] [--no-spread]\n"
		"               [--label S] DIR none|file|dir|file+dir SECONDS [MAX_OPS]\n");
	exit(2);
}

/* empty the run directory (flat, only files we made: read it rather than
 * guess the names) and, unless keep_dir, remove it; returns files removed */
static long remove_run(const char *path, int keep_dir)
{
	long n = 0;
	int dfd = open(path, O_RDONLY | O_DIRECTORY);
	if (dfd < 0)
		return -1;
	DIR *d = fdopendir(dup(dfd));
	if (!d) {
		close(dfd);
		return -1;
	}
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (unlinkat(dfd, e->d_name, 0) == 0)
			n++;
	}
	closedir(d);
	close(dfd);
	if (!keep_dir && rmdir(path) != 0)
		return -1;
	return n;
}

/* publish from name number *next on, until `seconds` or `max_ops` */
static struct result measure(int dfd, int mode, enum state state, long lag, const char *buf,
			     long size, double seconds, long max_ops, long *next, double *lat)
{
	int fsync_file = mode == M_FILE || mode == M_FILEDIR;
	int fsync_dir = mode == M_DIR || mode == M_FILEDIR;
	char tmp[64], fin[64], old[64];
	struct result r = {0};
	long n = 0, first = *next;
	struct devstat d0 = devstat_read(devstat_path);
	unsigned long long cpu0, delay0, cpu1, delay1;
	sched_read(&cpu0, &delay0);
	double t0 = now_s(), tend = t0 + seconds, t = t0;
	while (n < max_ops && t < tend) {
		long i = first + n;
		snprintf(tmp, sizeof tmp, "t%ld.task.tmp", i);
		snprintf(fin, sizeof fin, "t%ld.task.json", i);
		int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0)
			die("open", tmp);
		if (write(fd, buf, size) != size)
			die("write", tmp);
		if (n == 0) {
			struct stat fst;
			if (fstat(fd, &fst) == 0)
				r.first_ino = fst.st_ino;
		}
		if (fsync_file && fsync(fd) != 0)
			die("fsync", tmp);
		if (close(fd) != 0)
			die("close", tmp);
		if (renameat(dfd, tmp, dfd, fin) != 0)
			die("rename", tmp);
		if (fsync_dir && fsync(dfd) != 0)
			die("fsync dir", "");
		if (state == S_STEADY && i - first >= lag) {
			snprintf(old, sizeof old, "t%ld.task.json", i - lag);
			if (unlinkat(dfd, old, 0) != 0)
				die("unlink", old);
		}
		double t2 = now_s();
		lat[n++] = (t2 - t) * 1e6;
		t = t2;
	}
	sched_read(&cpu1, &delay1);
	r.cpu_ms = (cpu1 - cpu0) / 1e6;
	r.run_delay_ms = (delay1 - delay0) / 1e6;
	struct devstat d1 = devstat_read(devstat_path);
	if (d0.ok && d1.ok) {
		r.dev.ok = 1;
		r.dev.wr_ios = d1.wr_ios - d0.wr_ios;
		r.dev.wr_sectors = d1.wr_sectors - d0.wr_sectors;
		r.dev.wr_ms = d1.wr_ms - d0.wr_ms;
		r.dev.discards = d1.discards - d0.discards;
		r.dev.flushes = d1.flushes - d0.flushes;
		r.dev.flush_ms = d1.flush_ms - d0.flush_ms;
	}
	*next = first + n;
	if (state == S_STEADY) {
		/* the next burst starts a new window of LAG files: drop this one's */
		for (long i = first + (n > lag ? n - lag : 0); i < first + n; i++) {
			snprintf(old, sizeof old, "t%ld.task.json", i);
			(void)unlinkat(dfd, old, 0);
		}
	}
	r.ops = n;
	r.seconds = t - t0;
	qsort(lat, n, sizeof(double), cmp_double);
	if (n > 0) {
		r.median = n % 2 ? lat[n / 2] : (lat[n / 2 - 1] + lat[n / 2]) / 2;
		r.p90 = lat[(9 * n + 9) / 10 - 1]; /* nearest rank: ceil(0.9 n) */
		r.max = lat[n - 1];
	}
	return r;
}

int main(int argc, char **argv)
{
	enum state state = S_CLEAN;
	enum cleanup cleanup = CL_FILES;
	long churn = 20000, lag = 64, size = 256, series = 1;
	double every = 0;
	int spread = 1, churn_wait = 1;
	const char *label = "";
	int ai = 1;
	for (; ai < argc && !strncmp(argv[ai], "--", 2); ai++) {
		const char *o = argv[ai];
		if (!strcmp(o, "--no-spread")) {
			spread = 0;
			continue;
		}
		if (!strcmp(o, "--no-churn-wait")) {
			churn_wait = 0;
			continue;
		}
		if (ai + 1 >= argc)
			usage();
		const char *v = argv[++ai];
		if (!strcmp(o, "--state")) {
			int k = -1;
			for (int s = 0; s < 3; s++)
				if (!strcmp(v, state_names[s]))
					k = s;
			if (k < 0)
				usage();
			state = k;
		} else if (!strcmp(o, "--cleanup")) {
			int k = -1;
			for (int c = 0; c < 3; c++)
				if (!strcmp(v, cleanup_names[c]))
					k = c;
			if (k < 0)
				usage();
			cleanup = k;
		} else if (!strcmp(o, "--churn"))
			churn = atol(v);
		else if (!strcmp(o, "--lag"))
			lag = atol(v);
		else if (!strcmp(o, "--size"))
			size = atol(v);
		else if (!strcmp(o, "--series"))
			series = atol(v);
		else if (!strcmp(o, "--every"))
			every = atof(v);
		else if (!strcmp(o, "--label"))
			label = v;
		else
			usage();
	}
	if (argc - ai < 3 || argc - ai > 4)
		usage();
	const char *dir = argv[ai];
	int mode = -1;
	for (int m = 0; m < 4; m++)
		if (!strcmp(argv[ai + 1], mode_names[m]))
			mode = m;
	double seconds = atof(argv[ai + 2]);
	long max_ops = argc - ai == 4 ? atol(argv[ai + 3]) : 20000;
	if (mode < 0 || seconds <= 0 || max_ops <= 0 || lag <= 0 || size < 0 || churn < 0 ||
	    series < 1 || (series > 1 && every <= 0))
		usage();

	struct statfs sfs;
	if (statfs(dir, &sfs) != 0)
		die("statfs", dir);
	char fstype[64];
	fs_type_of(dir, fstype, sizeof fstype);
	struct stat dst;
	if (stat(dir, &dst) != 0)
		die("stat", dir);
	if (major(dst.st_dev) != 0) /* tmpfs has no block device */
		snprintf(devstat_path, sizeof devstat_path, "/sys/dev/block/%u:%u/stat",
			 major(dst.st_dev), minor(dst.st_dev));

	/* the run directory: DIR/.workbus-limits/run-<pid>-<realtime ns> */
	char base[4096], run[4200];
	if (spread) {
		if (limits_base(dir, base, sizeof base) != 0)
			die("making the probes' folder under", dir);
		remove_stale(base, "run-", NULL, 0);
	} else {
		snprintf(base, sizeof base, "%s", dir);
	}
	struct timespec rt;
	clock_gettime(CLOCK_REALTIME, &rt);
	snprintf(run, sizeof run, "%s/run-%d-%lld%09ld", base, (int)getpid(), (long long)rt.tv_sec,
		 rt.tv_nsec);
	if (mkdir(run, 0755) != 0)
		die("mkdir", run);
	struct stat rst;
	if (stat(run, &rst) != 0)
		die("stat", run);
	int dfd = open(run, O_RDONLY | O_DIRECTORY);
	if (dfd < 0)
		die("open", run);

	char *buf = malloc(size > 0 ? size : 1);
	double *lat = malloc(sizeof(double) * max_ops);
	if (!buf || !lat)
		die("malloc", NULL);
	memset(buf, 'x', size);
	if (size > 0)
		buf[size - 1] = '\n';

	double churn_s = 0, churn_wait_s = 0;
	if (state == S_CHURNED) {
		char name[64];
		double c0 = now_s();
		for (long i = 0; i < churn; i++) {
			snprintf(name, sizeof name, "c%ld", i);
			int fd = openat(dfd, name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
			if (fd < 0)
				die("churn create", name);
			if (write(fd, buf, size) != size)
				die("churn write", name);
			close(fd);
		}
		for (long i = 0; i < churn; i++) {
			snprintf(name, sizeof name, "c%ld", i);
			if (unlinkat(dfd, name, 0) != 0)
				die("churn unlink", name);
		}
		churn_s = now_s() - c0;
		if (churn_wait) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			double w0 = now_s();
			usleep((useconds_t)((1e9 - ts.tv_nsec) / 1e3) + 10000);
			churn_wait_s = now_s() - w0;
		}
	}

	struct result res[series];
	double since[series];
	long next = 0;
	double start = now_s();
	for (long k = 0; k < series; k++) {
		double due = start + k * every, wait = due - now_s();
		if (wait > 0)
			usleep((useconds_t)(wait * 1e6));
		since[k] = now_s() - start;
		res[k] = measure(dfd, mode, state, lag, buf, size, seconds, max_ops, &next, lat);
	}
	close(dfd);

	int keep_dir = cleanup == CL_FILES && spread && sfs.f_type == EXT4_MAGIC;
	double cleanup_s = 0;
	long removed = 0;
	if (cleanup != CL_KEEP) {
		double c0 = now_s();
		removed = remove_run(run, keep_dir);
		if (removed < 0)
			die("cleanup", run);
		cleanup_s = now_s() - c0;
	}

	for (long k = 0; k < series; k++) {
		struct result *r = &res[k];
		printf("{\"probe\":\"publish\",\"dir\":");
		json_str(dir);
		printf(",\"fs\":");
		json_str(fstype);
		printf(",\"fs_magic\":\"0x%lx\",\"mode\":\"%s\",\"state\":\"%s\"",
		       (unsigned long)sfs.f_type, mode_names[mode], state_names[state]);
		printf(",\"ops\":%ld,\"seconds\":%.4f,\"ops_per_s\":%.1f", r->ops, r->seconds,
		       r->seconds > 0 ? r->ops / r->seconds : 0.0);
		printf(",\"lat_us_median\":%.2f,\"lat_us_p90\":%.2f,\"lat_us_max\":%.1f", r->median,
		       r->p90, r->max);
		printf(",\"size\":%ld,\"max_ops\":%ld,\"seconds_limit\":%g", size, max_ops, seconds);
		if (state == S_CHURNED)
			printf(",\"churn\":%ld,\"churn_s\":%.3f,\"churn_wait_s\":%.3f", churn, churn_s,
			       churn_wait_s);
		if (state == S_STEADY)
			printf(",\"lag\":%ld", lag);
		if (series > 1)
			printf(",\"burst\":%ld,\"since_start_s\":%.2f", k, since[k]);
		printf(",\"cpu_ms\":%.1f,\"run_delay_ms\":%.1f", r->cpu_ms, r->run_delay_ms);
		if (r->dev.ok)
			printf(",\"dev\":{\"write_ios\":%llu,\"write_mb\":%.2f,\"write_ms\":%llu,"
			       "\"discards\":%llu,\"flushes\":%llu,\"flush_ms\":%llu}",
			       r->dev.wr_ios, r->dev.wr_sectors / 2048.0, r->dev.wr_ms, r->dev.discards,
			       r->dev.flushes, r->dev.flush_ms);
		printf(",\"run_dir\":");
		json_str(run);
		printf(",\"run_dir_ino\":%llu,\"dir_ino\":%llu,\"first_file_ino\":%llu,\"spread\":%s",
		       (unsigned long long)rst.st_ino, (unsigned long long)dst.st_ino, r->first_ino,
		       spread ? "true" : "false");
		printf(",\"cleanup\":\"%s\"", cleanup_names[cleanup]);
		if (cleanup != CL_KEEP)
			printf(",\"cleanup_files\":%ld,\"cleanup_s\":%.3f,\"run_dir_kept\":%s", removed,
			       cleanup_s, keep_dir ? "true" : "false");
		printf(",\"label\":");
		json_str(label);
		printf("}\n");
	}
	return 0;
}
