# cmake -DCARGO=<cargo> -DSRC=<repo> -DTARGET_DIR=<dir> -P CheckNoSeedAbi.cmake
# Builds the library without the `seed-abi` feature and checks with nm that neither the
# shared nor the static library defines a QEMU-named symbol (postcopy_*, ram_*,
# migration_*, migrate_*, qemu_*), while both still define the pcr_ functions.
cmake_minimum_required(VERSION 3.16)
find_program(NM nm REQUIRED)
execute_process(COMMAND "${CARGO}" build --lib -p postcopy-ram --no-default-features --features capi
                        --target-dir "${TARGET_DIR}"
                WORKING_DIRECTORY "${SRC}" RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cargo build --no-default-features --features capi failed (${rc})")
endif()
set(qemu_re "^(postcopy_|ram_|migration_|migrate_|qemu_)")
foreach(lib "${TARGET_DIR}/debug/libpostcopy_ram.so" "${TARGET_DIR}/debug/libpostcopy_ram.a")
  execute_process(COMMAND "${NM}" -g --defined-only --format=posix "${lib}"
                  OUTPUT_VARIABLE out ERROR_QUIET RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "nm ${lib} failed (${rc})")
  endif()
  string(REPLACE "\n" ";" lines "${out}")
  set(qemu_named "")
  set(pcr 0)
  foreach(l IN LISTS lines)
    string(REGEX REPLACE " .*" "" sym "${l}")
    if(sym MATCHES "${qemu_re}")
      list(APPEND qemu_named "${sym}")
    elseif(sym MATCHES "^pcr_")
      math(EXPR pcr "${pcr} + 1")
    endif()
  endforeach()
  if(qemu_named)
    list(REMOVE_DUPLICATES qemu_named)
    message(FATAL_ERROR "${lib} defines QEMU-named symbols: ${qemu_named}")
  endif()
  if(pcr LESS 30)
    message(FATAL_ERROR "${lib} defines only ${pcr} pcr_ symbols")
  endif()
  message(STATUS "${lib}: ${pcr} pcr_ symbols, no QEMU-named symbol")
endforeach()
