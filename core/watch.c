/* watch.c - notice when the handler script or its modules change. */
#include "watch.h"

#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

/* Folders scanned below the script's own, and files looked at in all. */
#define WATCH_MAX_FILES 4096

struct fp {
    uint64_t h;
    int files;
};

static void
mix(struct fp *f, const void *p, size_t n)
{
    const unsigned char *b = p;

    for (size_t i = 0; i < n; i++) {
        f->h ^= b[i];
        f->h *= 1099511628211ULL;
    }
}

static void
mix_file(struct fp *f, const char *path)
{
    struct stat st;

    if (f->files++ >= WATCH_MAX_FILES || stat(path, &st) != 0)
        return;
    mix(f, path, strlen(path));
    mix(f, &st.st_ino, sizeof(st.st_ino));
    mix(f, &st.st_size, sizeof(st.st_size));
    mix(f, &st.st_mtim, sizeof(st.st_mtim));
}

static void
scan(struct fp *f, const char *dir, int depth)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[4096];

    if (d == NULL)
        return;
    /* readdir order is not stable across renames: add, never chain. */
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        struct fp one = {.h = 1469598103934665603ULL};

        if (e->d_name[0] == '.')
            continue;
        if (snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) >=
            (int)sizeof(path))
            continue;
        if (n > 4 && strcmp(e->d_name + n - 4, ".lua") == 0) {
            mix_file(&one, path);
            f->h += one.h;
            f->files++;
        } else if (depth > 0 && e->d_type == DT_DIR) {
            scan(f, path, depth - 1);
        }
    }
    closedir(d);
}

uint64_t
watch_fingerprint(const char *script)
{
    struct fp f = {.h = 1469598103934665603ULL};
    char dir[4096];
    const char *slash = strrchr(script, '/');

    mix_file(&f, script);
    if (slash == NULL)
        snprintf(dir, sizeof(dir), ".");
    else
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - script), script);
    if (dir[0] == '\0')
        snprintf(dir, sizeof(dir), "/");
    scan(&f, dir, 1);
    return f.h;
}
