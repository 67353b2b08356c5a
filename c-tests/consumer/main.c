/* Consumer of an installed postcopy-ram: version and host support. */
#include <postcopy_ram.h>
#include <stdio.h>

int main(void)
{
    const char *version = postcopy_ram_version();
    uint32_t number = postcopy_ram_version_number();
    bool supported = postcopy_ram_supported_by_host();
    if (version == NULL)
        return 1;
    printf("postcopy-ram %s (%u.%u.%u), supported by host: %s\n", version,
           (unsigned)(number >> 16), (unsigned)((number >> 8) & 0xff), (unsigned)(number & 0xff),
           supported ? "yes" : "no");
    return 0;
}
