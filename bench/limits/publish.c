/*
 * publish.c -- workload "L" of shared WORKLOADS.md: the physical limit of an
 * atomic publish (write a temp file, rename it to its final name) on one folder.
 *
 *   publish [options] DIR MODE SECONDS [MAX_OPS]
 *
 *   MODE     none | file | dir | file+dir   (which fsyncs each op does)
 *   SECONDS  measuring time (the loop stops at SECONDS or MAX_OPS, default 20000)
 *
 * op i = open("t<i>.task.tmp", O_WRONLY|O_CREAT|O_TRUNC), write 256 bytes,
 *        [fsync(file)], close, renameat("t<i>.task.tmp" -> "t<i>.task.json"),
 *        [fsync(dir)]                        -- a new name every op, as a bus does.
 *
 * Options:
 *   --state S     clean   (default) published files are kept;
 *                 churned right before measuring, CHURN files are created and
 *                         unlinked in the measuring directory;
 *                 steady  each op also unlinks the file published LAG ops earlier
 *                         (that unlink is inside the op's timing).
 *   --churn N     files created+unlinked for "churned" (default 20000)
 *   --lag N       distance of the unlink in "steady" (default 64)
 *   --size N      bytes written per op (default 256)
 *   --cleanup C   now   (default) remove the run directory at the end;
 *                 keep  leave it (its path is in the JSON line);
 *   --no-spread   create the run directory directly in DIR (see below)
 *   --label S     free text copied into the JSON line
 *
 * Output: one JSON line on stdout (ops/s, median/p90/max latency in us, ...).
 *
 * Where the run directory goes, and why (ext4 without a journal):
 * ext4 in no-journal mode refuses to reuse an inode freed less than 60 s ago
 * (360 s while its inode-table block is still dirty): ialloc.c recently_deleted().
 * New inodes of a directory are taken from the first block group of the
 * directory's flex group that has free inodes, so after a mass deletion every
 * create in that flex group walks over the recently freed inodes first, for
 * minutes.  To keep its own churn and cleanup from poisoning the folder that
 * later measurements (and the bus) use, this program works under
 * DIR/.workbus-limits, a directory marked "top of hierarchy" (chattr +T,
 * FS_TOPDIR_FL) so that ext4's Orlov allocator spreads each run directory to
 * another flex group, away from DIR's own.  (On tmpfs the flag is refused
 * and does not matter.)  --no-spread turns this off.
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

enum mode { M_NONE, M_FILE, M_DIR, M_FILEDIR };
enum state { S_CLEAN, S_CHURNED, S_STEADY };

static const char *mode_names[] = {"none", "file", "dir", "file+dir"};
static const char *state_names[] = {"clean", "churned", "steady"};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what, const char *arg)
{
	fprintf(stderr, "publish: %s %s: %s\n", what, arg ? arg : "", strerror(errno));
	exit(1);
}

static void usage(void)
{
	fprintf(stderr,
		"usage: publish [--state clean|churned|steady] [--churn N] [--lag N] [--size N]\n"
		"               [--cleanup now|keep] [--no-spread] [--label S]\n"
		"               DIR none|file|dir|file+dir SECONDS [MAX_OPS]\n");
	exit(2);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* file-system type name of the mount holding path (from mountinfo), or "?" */
static void fs_type_of(const char *path, char *out, size_t outlen)
{
	struct stat st;
	snprintf(out, outlen, "?");
	if (stat(path, &st) != 0)
		return;
	FILE *f = fopen("/proc/self/mountinfo", "r");
	if (!f)
		return;
	char line[4096];
	while (fgets(line, sizeof line, f)) {
		unsigned maj, min;
		if (sscanf(line, "%*d %*d %u:%u", &maj, &min) != 2)
			continue;
		if (maj != major(st.st_dev) || min != minor(st.st_dev))
			continue;
		char *sep = strstr(line, " - ");
		if (sep && sscanf(sep + 3, "%63s", out) == 1)
			break;
	}
	fclose(f);
}

/* JSON string without the quotes; our strings are paths and labels */
static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fprintf(f, "\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			fprintf(f, "\\u%04x", *s);
		else
			fputc(*s, f);
	}
	fputc('"', f);
}

/* remove the run directory: it is flat and holds only files we made; read it
 * rather than guess the names, so the leftovers of a killed run go too */
static long remove_tree(const char *path)
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
	if (rmdir(path) != 0)
		return -1;
	return n;
}

int main(int argc, char **argv)
{
	enum state state = S_CLEAN;
	long churn = 20000, lag = 64, size = 256;
	int cleanup_now = 1, spread = 1;
	const char *label = "";
	int ai = 1;
	for (; ai < argc && !strncmp(argv[ai], "--", 2); ai++) {
		const char *o = argv[ai];
		const char *v = ai + 1 < argc ? argv[ai + 1] : NULL;
		if (!strcmp(o, "--no-spread")) {
			spread = 0;
			continue;
		}
		if (!v)
			usage();
		ai++;
		if (!strcmp(o, "--state")) {
			if (!strcmp(v, "clean"))
				state = S_CLEAN;
			else if (!strcmp(v, "churned"))
				state = S_CHURNED;
			else if (!strcmp(v, "steady"))
				state = S_STEADY;
			else
				usage();
		} else if (!strcmp(o, "--churn"))
			churn = atol(v);
		else if (!strcmp(o, "--lag"))
			lag = atol(v);
		else if (!strcmp(o, "--size"))
			size = atol(v);
		else if (!strcmp(o, "--cleanup")) {
			if (!strcmp(v, "now"))
				cleanup_now = 1;
			else if (!strcmp(v, "keep"))
				cleanup_now = 0;
			else
				usage();
		} else if (!strcmp(o, "--label"))
			label = v;
		else
			usage();
	}
	if (argc - ai < 3 || argc - ai > 4)
		usage();
	const char *dir = argv[ai];
	const char *mname = argv[ai + 1];
	double seconds = atof(argv[ai + 2]);
	long max_ops = argc - ai == 4 ? atol(argv[ai + 3]) : 20000;
	int mode = -1;
	for (int m = 0; m < 4; m++)
		if (!strcmp(mname, mode_names[m]))
			mode = m;
	if (mode < 0 || seconds <= 0 || max_ops <= 0 || lag <= 0 || size < 0)
		usage();
	int fsync_file = mode == M_FILE || mode == M_FILEDIR;
	int fsync_dir = mode == M_DIR || mode == M_FILEDIR;

	struct statfs sfs;
	if (statfs(dir, &sfs) != 0)
		die("statfs", dir);
	char fstype[64];
	fs_type_of(dir, fstype, sizeof fstype);

	/* the run directory: DIR/.workbus-limits/run-<pid>-<ns> (spread) */
	char base[4096], run[4200];
	if (spread) {
		snprintf(base, sizeof base, "%s/.workbus-limits", dir);
		if (mkdir(base, 0755) != 0 && errno != EEXIST)
			die("mkdir", base);
		int bfd = open(base, O_RDONLY | O_DIRECTORY);
		if (bfd < 0)
			die("open", base);
		int flags = 0;
		if (ioctl(bfd, FS_IOC_GETFLAGS, &flags) == 0 && !(flags & FS_TOPDIR_FL)) {
			flags |= FS_TOPDIR_FL;
			(void)ioctl(bfd, FS_IOC_SETFLAGS, &flags); /* best effort */
		}
		close(bfd);
	} else {
		snprintf(base, sizeof base, "%s", dir);
	}
	struct timespec rt;
	clock_gettime(CLOCK_REALTIME, &rt);
	snprintf(run, sizeof run, "%s/run-%d-%lld%09ld", base, (int)getpid(),
		 (long long)rt.tv_sec, rt.tv_nsec);
	if (mkdir(run, 0755) != 0)
		die("mkdir", run);
	struct stat rst, dst;
	stat(run, &rst);
	stat(dir, &dst);
	int dfd = open(run, O_RDONLY | O_DIRECTORY);
	if (dfd < 0)
		die("open", run);

	char *buf = malloc(size > 0 ? size : 1);
	memset(buf, 'x', size);
	if (size > 0)
		buf[size - 1] = '\n';
	char tmp[64], fin[64];

	/* churned: create + unlink CHURN files right before measuring */
	double churn_s = 0;
	if (state == S_CHURNED) {
		double c0 = now_s();
		for (long i = 0; i < churn; i++) {
			snprintf(tmp, sizeof tmp, "c%ld", i);
			int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
			if (fd < 0)
				die("churn create", tmp);
			if (write(fd, buf, size) != size)
				die("churn write", tmp);
			close(fd);
		}
		for (long i = 0; i < churn; i++) {
			snprintf(tmp, sizeof tmp, "c%ld", i);
			if (unlinkat(dfd, tmp, 0) != 0)
				die("churn unlink", tmp);
		}
		churn_s = now_s() - c0;
	}

	double *lat = malloc(sizeof(double) * max_ops);
	if (!lat)
		die("malloc", NULL);
	long n = 0;
	double t0 = now_s(), tend = t0 + seconds, t = t0;
	while (n < max_ops && t < tend) {
		long i = n;
		snprintf(tmp, sizeof tmp, "t%ld.task.tmp", i);
		snprintf(fin, sizeof fin, "t%ld.task.json", i);
		int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0)
			die("open", tmp);
		if (write(fd, buf, size) != size)
			die("write", tmp);
		if (fsync_file && fsync(fd) != 0)
			die("fsync", tmp);
		if (close(fd) != 0)
			die("close", tmp);
		if (renameat(dfd, tmp, dfd, fin) != 0)
			die("rename", tmp);
		if (fsync_dir && fsync(dfd) != 0)
			die("fsync dir", run);
		if (state == S_STEADY && i >= lag) {
			char old[64];
			snprintf(old, sizeof old, "t%ld.task.json", i - lag);
			if (unlinkat(dfd, old, 0) != 0)
				die("unlink", old);
		}
		double t2 = now_s();
		lat[n++] = (t2 - t) * 1e6;
		t = t2;
	}
	double elapsed = t - t0;
	close(dfd);

	double cleanup_s = 0;
	long removed = 0;
	if (cleanup_now) {
		double c0 = now_s();
		removed = remove_tree(run);
		if (removed < 0)
			die("cleanup", run);
		cleanup_s = now_s() - c0;
	}

	qsort(lat, n, sizeof(double), cmp_double);
	double med = n % 2 ? lat[n / 2] : (lat[n / 2 - 1] + lat[n / 2]) / 2;
	long r90 = (long)((9 * n + 9) / 10); /* nearest rank: ceil(0.9 n) */
	double p90 = lat[r90 - 1], mx = lat[n - 1];

	printf("{\"probe\":\"publish\",\"dir\":");
	json_str(stdout, dir);
	printf(",\"fs\":");
	json_str(stdout, fstype);
	printf(",\"fs_magic\":\"0x%lx\",\"mode\":\"%s\",\"state\":\"%s\"", (unsigned long)sfs.f_type,
	       mode_names[mode], state_names[state]);
	printf(",\"ops\":%ld,\"seconds\":%.4f,\"ops_per_s\":%.1f", n, elapsed, n / elapsed);
	printf(",\"lat_us_median\":%.2f,\"lat_us_p90\":%.2f,\"lat_us_max\":%.1f", med, p90, mx);
	printf(",\"size\":%ld,\"max_ops\":%ld,\"seconds_limit\":%g", size, max_ops, seconds);
	if (state == S_CHURNED)
		printf(",\"churn\":%ld,\"churn_s\":%.3f", churn, churn_s);
	if (state == S_STEADY)
		printf(",\"lag\":%ld", lag);
	printf(",\"run_dir\":");
	json_str(stdout, run);
	printf(",\"run_dir_ino\":%llu,\"dir_ino\":%llu,\"spread\":%s",
	       (unsigned long long)rst.st_ino, (unsigned long long)dst.st_ino,
	       spread ? "true" : "false");
	printf(",\"cleanup\":\"%s\"", cleanup_now ? "now" : "keep");
	if (cleanup_now)
		printf(",\"cleanup_files\":%ld,\"cleanup_s\":%.3f", removed, cleanup_s);
	printf(",\"label\":");
	json_str(stdout, label);
	printf("}\n");
	return 0;
}
