/* A counter that keeps its count in its checkpoint store (ham's extension, NX-OS's PSS):
 * killed at any moment, its next process goes on from the last count it put.
 * Run it as an entity of ham; it puts `count` after each increment and, at start,
 * `started-from` and `keys-at-start`, the keys it found (all shared, so `hamctl pss ENTITY`
 * shows them). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include <ham.h>

int main(void) {
    uint64_t n = 0;
    ssize_t len = ham_pss_get("count", &n, sizeof n);
    if (len < 0 && errno != ENOENT) {
        perror("ham_pss_get");
        return 2;
    }
    if (len >= 0 && len != (ssize_t)sizeof n) {
        fprintf(stderr, "pss_counter: count has %zd bytes\n", len);
        return 3;
    }
    char keys[256];
    ssize_t klen = ham_pss_keys(keys, sizeof keys);
    if (klen < 0 || klen > (ssize_t)sizeof keys) {
        perror("ham_pss_keys");
        return 2;
    }
    if (ham_pss_put("keys-at-start", keys, (size_t)klen, HAM_PSS_SHARED) != 0) {
        perror("ham_pss_put");
        return 2;
    }
    if (ham_pss_put("started-from", &n, sizeof n, HAM_PSS_SHARED) != 0) {
        perror("ham_pss_put");
        return 2;
    }
    for (;;) {
        n++;
        if (ham_pss_put("count", &n, sizeof n, HAM_PSS_SHARED) != 0) {
            perror("ham_pss_put");
            return 2;
        }
        usleep(500);
    }
}
