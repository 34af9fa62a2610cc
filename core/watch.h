/* watch.h - notice when the handler script or its modules change. */
#ifndef GRWHD_WATCH_H
#define GRWHD_WATCH_H

#include <stdint.h>

/*
 * A fingerprint of the script and of every .lua file in its folder and
 * the folders right below it (where `require` finds its modules): names,
 * inodes, sizes and modification times.  A file replaced by a rename (as
 * editors and git do) gets a new inode, so it changes the fingerprint
 * even with the same size and time.
 */
uint64_t watch_fingerprint(const char *script);

#endif
