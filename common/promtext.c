/*
 * promtext.c — the Prometheus text exposition's number format and label
 * values (promtext.h).
 */
#include "promtext.h"

#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

void promtext_double(char *out, size_t size, double v)
{
    if (isnan(v)) {
        snprintf(out, size, "NaN");
    } else if (isinf(v)) {
        snprintf(out, size, v > 0 ? "+Inf" : "-Inf");
    } else {
        snprintf(out, size, "%.15g", v);
        if (strtod(out, NULL) != v)
            snprintf(out, size, "%.17g", v);
    }
}

void promtext_label_value(strbuf *b, const char *v)
{
    for (; *v; v++) {
        unsigned char c = (unsigned char)*v;
        if (c == '\\' || c == '"')
            sb_printf(b, "\\%c", c);
        else if (c == '\n')
            sb_printf(b, "\\n");
        else if (c >= 0x20)
            sb_printf(b, "%c", c);
    }
}

typedef struct pt_buf {
    char *p;
    size_t size, used;        /* used may pass size: what it would take */
} pt_buf;

__attribute__((format(printf, 2, 3)))
static void pt_printf(pt_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->used < b->size ? b->p + b->used : NULL,
                      b->used < b->size ? b->size - b->used : 0, fmt, ap);
    va_end(ap);
    if (n > 0)
        b->used += (size_t)n;
}

static void pt_family(pt_buf *b, const char *name, const char *type, const char *help,
                      int have, double v)
{
    char num[32];
    pt_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
    if (have) {
        promtext_double(num, sizeof num, v);
        pt_printf(b, "%s %s\n", name, num);
    }
}

/* /proc/self/stat's fields after the command name (which may hold blanks
 * and parentheses, hence the last ')'): starttime is field 22, vsize 23. */
static int pt_stat(double *start_ticks, double *vsize)
{
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return -1;
    unsigned long long start = 0, vs = 0;
    /* Fields 3..21 skipped, then 22 and 23. */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d "
                      "%*d %*d %llu %llu", &start, &vs) != 2)
        return -1;
    *start_ticks = (double)start;
    *vsize = (double)vs;
    return 0;
}

static int pt_boot_time(double *btime)
{
    char line[256];
    FILE *f = fopen("/proc/stat", "r");
    int found = -1;
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof line, f) != NULL) {
        unsigned long long t;
        if (sscanf(line, "btime %llu", &t) == 1) {
            *btime = (double)t;
            found = 0;
            break;
        }
    }
    fclose(f);
    return found;
}

int promtext_process(char *out, size_t size)
{
    pt_buf b = {.p = out, .size = size};
    if (size > 0)
        out[0] = '\0';
    long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);

    struct rusage ru;
    int have_cpu = getrusage(RUSAGE_SELF, &ru) == 0;
    double cpu = have_cpu ? (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                                (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6
                          : 0;
    pt_family(&b, "process_cpu_seconds_total", "counter",
              "Total user and system CPU time spent in seconds.", have_cpu, cpu);

    unsigned long long pages_total = 0, pages_rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    int have_rss = f != NULL && fscanf(f, "%llu %llu", &pages_total, &pages_rss) == 2 && page > 0;
    if (f != NULL)
        fclose(f);
    pt_family(&b, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
              have_rss, (double)pages_rss * (double)page);

    double start_ticks = 0, vsize = 0, btime = 0;
    int have_stat = pt_stat(&start_ticks, &vsize) == 0;
    pt_family(&b, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.",
              have_stat, vsize);
    int have_start = have_stat && tick > 0 && pt_boot_time(&btime) == 0;
    pt_family(&b, "process_start_time_seconds", "gauge",
              "Start time of the process since unix epoch in seconds.", have_start,
              btime + start_ticks / (double)tick);

    long fds = -1;
    DIR *d = opendir("/proc/self/fd");
    if (d != NULL) {
        fds = 0;
        for (struct dirent *e; (e = readdir(d)) != NULL;)
            fds += e->d_name[0] != '.';
        fds -= 1;             /* the directory's own descriptor */
        closedir(d);
    }
    pt_family(&b, "process_open_fds", "gauge", "Number of open file descriptors.", fds >= 0,
              (double)fds);
    struct rlimit rl;
    int have_max = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY;
    pt_family(&b, "process_max_fds", "gauge", "Maximum number of open file descriptors.",
              have_max, have_max ? (double)rl.rlim_cur : 0);
    return (int)b.used;
}
