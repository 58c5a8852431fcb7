/*
 * probe.h -- what the probes of bench/limits share: the clock, the machine's
 * and the process's CPU time, the block device's counters, the file
 * system's name, JSON strings, the probes' run folders, the atomic publish.
 * Header-only (static inline), so each probe stays one `gcc`
 * command.
 */
#ifndef WORKBUS_PROBE_H
#define WORKBUS_PROBE_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

static inline double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static inline int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* busy CPU time of the whole machine in s (/proc/stat, all but idle, iowait,
 * steal and guest, which user/nice already count) */
static inline double machine_busy_s(void)
{
	unsigned long long v[8] = {0};
	FILE *f = fopen("/proc/stat", "r");
	if (!f)
		return 0;
	int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
		       &v[4], &v[5], &v[6], &v[7]);
	fclose(f);
	if (n < 7)
		return 0;
	return (double)(v[0] + v[1] + v[2] + v[5] + v[6]) / sysconf(_SC_CLK_TCK);
}

/* counters of the block device under a folder (/sys/dev/block/M:m/stat), to
 * see what the disk did during a measurement -- including for other
 * processes */
struct devstat {
	int ok;
	unsigned long long wr_ios, wr_sectors, wr_ms, discards, flushes, flush_ms;
};

static inline struct devstat devstat_read(const char *path)
{
	struct devstat d = {0};
	unsigned long long v[17] = {0};
	FILE *f = path[0] ? fopen(path, "r") : NULL;
	if (!f)
		return d;
	int n = 0;
	while (n < 17 && fscanf(f, "%llu", &v[n]) == 1)
		n++;
	fclose(f);
	if (n < 11)
		return d;
	d.ok = 1;
	d.wr_ios = v[4];
	d.wr_sectors = v[6];
	d.wr_ms = v[7];
	d.discards = n >= 15 ? v[11] : 0;
	d.flushes = n >= 17 ? v[15] : 0;
	d.flush_ms = n >= 17 ? v[16] : 0;
	return d;
}

/* file-system type of the mount holding path, from mountinfo ("?" if unknown) */
static inline void fs_type_of(const char *path, char *out, size_t outlen)
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

/* s as a JSON string on stdout */
static inline void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			printf("\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			printf("\\u%04x", *s);
		else
			putchar(*s);
	}
	putchar('"');
}

/* age after which an emptied run directory is removed (see publish.c) */
#define STALE_S 600

/* DIR/.workbus-limits into base, made if need be and marked "top of
 * directory hierarchy" (chattr +T) so that ext4 puts each run directory in
 * the least-used flex group (see publish.c); -1 with errno on failure */
static inline int limits_base(const char *dir, char *base, size_t len)
{
	snprintf(base, len, "%s/.workbus-limits", dir);
	if (mkdir(base, 0755) != 0 && errno != EEXIST)
		return -1;
	int bfd = open(base, O_RDONLY | O_DIRECTORY);
	if (bfd < 0)
		return -1;
	int flags = 0;
	if (ioctl(bfd, FS_IOC_GETFLAGS, &flags) == 0 && !(flags & FS_TOPDIR_FL)) {
		flags |= FS_TOPDIR_FL;
		(void)ioctl(bfd, FS_IOC_SETFLAGS, &flags); /* best effort */
	}
	close(bfd);
	return 0;
}

/* rmdir the emptied run directories of base whose names start with prefix
 * and that are older than STALE_S, with their subfolders sub[0..nsub) (not
 * full ones: a mass deletion now would poison a flex group that a run might
 * then use) */
static inline void remove_stale(const char *base, const char *prefix, const char *const *sub,
				int nsub)
{
	DIR *d = opendir(base);
	if (!d)
		return;
	time_t now = time(NULL);
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (strncmp(e->d_name, prefix, strlen(prefix)) != 0)
			continue;
		char p[4400];
		struct stat st;
		snprintf(p, sizeof p, "%s/%s", base, e->d_name);
		if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode) || now - st.st_mtime <= STALE_S)
			continue;
		for (int i = 0; i < nsub; i++) {
			char q[4600];
			snprintf(q, sizeof q, "%s/%s", p, sub[i]);
			(void)rmdir(q); /* fails harmlessly if not empty */
		}
		(void)rmdir(p); /* likewise */
	}
	closedir(d);
}

/* a fresh run folder DIR/.workbus-limits/<prefix>-<pid>-<ns> into run, with
 * the subfolders sub[0..n) opened into dfd[0..n); emptied run folders of
 * the same prefix older than STALE_S are removed first. NULL when done,
 * else the step that failed (errno set; run holds the path if it got that
 * far) */
static inline const char *make_run(const char *dir, const char *prefix, const char *const *sub,
				   int n, int *dfd, char *run, size_t runlen)
{
	char base[4096];
	snprintf(run, runlen, "%s", dir);
	if (limits_base(dir, base, sizeof base) != 0)
		return "making the probes' folder under";
	remove_stale(base, prefix, sub, n);
	struct timespec rt;
	clock_gettime(CLOCK_REALTIME, &rt);
	snprintf(run, runlen, "%s/%s%d-%lld%09ld", base, prefix, (int)getpid(),
		 (long long)rt.tv_sec, rt.tv_nsec);
	if (mkdir(run, 0755) != 0)
		return "mkdir";
	for (int f = 0; f < n; f++) {
		char p[4400];
		snprintf(p, sizeof p, "%s/%s", run, sub[f]);
		if (mkdir(p, 0755) != 0)
			return "mkdir of a folder in";
		dfd[f] = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd[f] < 0)
			return "open of a folder in";
	}
	return NULL;
}

/* CPU time of this process (all its threads) and of its reaped children,
 * in s */
static inline double own_cpu_s(void)
{
	struct rusage s, c;
	getrusage(RUSAGE_SELF, &s);
	getrusage(RUSAGE_CHILDREN, &c);
	return s.ru_utime.tv_sec + s.ru_stime.tv_sec + c.ru_utime.tv_sec + c.ru_stime.tv_sec +
	       (s.ru_utime.tv_usec + s.ru_stime.tv_usec + c.ru_utime.tv_usec + c.ru_stime.tv_usec) / 1e6;
}

/* this thread's CPU time and runqueue wait in ns
 * (/proc/thread-self/schedstat); a wait well above zero means other
 * processes competed for the CPUs */
static inline void sched_read(unsigned long long *cpu_ns, unsigned long long *delay_ns)
{
	*cpu_ns = *delay_ns = 0;
	FILE *f = fopen("/proc/thread-self/schedstat", "r");
	if (!f)
		return;
	if (fscanf(f, "%llu %llu", cpu_ns, delay_ns) != 2)
		*cpu_ns = *delay_ns = 0;
	fclose(f);
}

/* this thread's runqueue wait in ns (see sched_read) */
static inline unsigned long long run_delay_ns(void)
{
	unsigned long long cpu, delay;
	sched_read(&cpu, &delay);
	return delay;
}

/* write a record atomically into the folder `dir`: a dot-name, [fdatasync],
 * rename, [fsync of the folder] (`sync` asks for both); NULL when done,
 * else the step that failed, with errno */
static inline const char *publish_at(int dir, const char *name, const char *buf, size_t len,
				     int sync)
{
	char tmp[NAME_MAX + 1];
	snprintf(tmp, sizeof tmp, ".%s.tmp", name);
	int fd = openat(dir, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return "create";
	if (write(fd, buf, len) != (ssize_t)len)
		return "write";
	if (sync && fdatasync(fd) != 0)
		return "fdatasync";
	if (close(fd) != 0)
		return "close";
	if (renameat(dir, tmp, dir, name) != 0)
		return "rename";
	if (sync && fsync(dir) != 0)
		return "fsync of the folder for";
	return NULL;
}

/* unlink the files of a run's folders dfd[0..n); the folders stay (see
 * publish.c); returns how many */
static inline long empty_folders(const int *dfd, int n)
{
	long removed = 0;
	for (int f = 0; f < n; f++) {
		DIR *d = fdopendir(dup(dfd[f]));
		if (!d)
			continue;
		struct dirent *e;
		while ((e = readdir(d)) != NULL)
			if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
				removed += unlinkat(dfd[f], e->d_name, 0) == 0;
		closedir(d);
	}
	return removed;
}

#endif
