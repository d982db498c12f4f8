// How many of a mapped file's bytes get 2 MB (PMD) page-table entries: maps FILE, optionally evicts its page cache
// first and/or asks for huge pages, reads every 4 KB page, and prints the process's FilePmdMapped. See README.md
// beside it.
//   gcc -O2 map_pages.c -o map_pages && ./map_pages FILE MODE    (MODE bits: 1 evict first, 2 MADV_HUGEPAGE, 4 WILLNEED)
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDONLY); struct stat st; fstat(fd, &st);
    if (atoi(argv[2]) & 1) posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    char *p = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    printf("addr %p aligned2M %d\n", p, ((unsigned long)p & ((2<<20)-1)) == 0);
    if (atoi(argv[2]) & 2) printf("madvise %d\n", madvise(p, st.st_size, MADV_HUGEPAGE));
    if (atoi(argv[2]) & 4) printf("willneed %d\n", posix_madvise(p, st.st_size, POSIX_MADV_WILLNEED));
    fflush(stdout);
    unsigned long s = 0; for (off_t o = 0; o < st.st_size; o += 4096) s += p[o];
    char cmd[256]; snprintf(cmd, sizeof cmd, "grep -E 'FilePmdMapped|^Rss' /proc/%d/smaps_rollup", getpid()); system(cmd);
    return s == 1;
}
