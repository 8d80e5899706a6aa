/*
 * LD_PRELOAD shim for the benchmarks only: sets TCP_NODELAY on every socket
 * nginx accepts, so that Nchan's EventSource responses (which nginx leaves
 * with Nagle on) can be measured as sse-node's sockets are set. Built and
 * used by scripts/bench for the "nchan (nodelay)" runs; never deployed.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static void nodelay(int fd) {
    int on = 1;
    if (fd >= 0) {
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    }
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    static int (*real)(int, struct sockaddr *, socklen_t *, int);
    if (!real) {
        real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
    }
    int conn = real(fd, addr, len, flags);
    nodelay(conn);
    return conn;
}

int accept(int fd, struct sockaddr *addr, socklen_t *len) {
    static int (*real)(int, struct sockaddr *, socklen_t *);
    if (!real) {
        real = (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "accept");
    }
    int conn = real(fd, addr, len);
    nodelay(conn);
    return conn;
}
