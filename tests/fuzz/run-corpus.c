/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Runs a libFuzzer target over files (the committed corpus) without libFuzzer, so the regular
 * sanitizer build checks every corpus entry on every test run. */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char *argv[]) {
        for (int i = 1; i < argc; i++) {
                FILE *f = fopen(argv[i], "re");
                uint8_t *buf;
                long n;

                if (!f || fseek(f, 0, SEEK_END) < 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) < 0) {
                        perror(argv[i]);
                        return 1;
                }
                buf = malloc((size_t) n + 1);
                if (!buf || fread(buf, 1, (size_t) n, f) != (size_t) n) {
                        perror(argv[i]);
                        return 1;
                }
                fclose(f);
                LLVMFuzzerTestOneInput(buf, (size_t) n);
                free(buf);
        }
        printf("%d corpus entries passed\n", argc - 1);
        return 0;
}
