# cmake -DPREFIX= -DSRC=<c-tests/consumer> -DBIN= -DVERSION= -DSONAME= -DLIBDIR= -DC_COMPILER= -DGENERATOR= -P RunConsumer.cmake
# Configures, builds and runs c-tests/consumer against the staging install: find_package
# must find the staged package (not another one), both programs must run and print the
# version; the shared one must need the SONAME, the static one must not. Then checks that
# incompatible version requests are refused.
cmake_minimum_required(VERSION 3.16)
file(REMOVE_RECURSE "${BIN}")
set(common -G "${GENERATOR}" "-DCMAKE_C_COMPILER=${C_COMPILER}" "-DCMAKE_PREFIX_PATH=${PREFIX}"
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF
    -DCMAKE_BUILD_TYPE=Release)
execute_process(COMMAND "${CMAKE_COMMAND}" -S "${SRC}" -B "${BIN}/consumer" ${common}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("${out}${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "configuring the consumer failed (${rc})")
endif()
file(STRINGS "${BIN}/consumer/CMakeCache.txt" dir_line REGEX "^postcopy-ram_DIR:")
if(NOT dir_line STREQUAL "postcopy-ram_DIR:PATH=${PREFIX}/${LIBDIR}/cmake/postcopy-ram")
  message(FATAL_ERROR "find_package found ${dir_line}, expected ${PREFIX}/${LIBDIR}/cmake/postcopy-ram")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" --build "${BIN}/consumer" RESULT_VARIABLE rc
                OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("${out}${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "building the consumer failed (${rc})")
endif()
find_program(OBJDUMP objdump REQUIRED)
foreach(prog consumer consumer_static)
  execute_process(COMMAND "${BIN}/consumer/${prog}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  message("${prog}: ${out}${err}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${prog} exited with ${rc}")
  endif()
  if(NOT out MATCHES "^postcopy-ram ${VERSION} \\(${VERSION}\\), supported by host: (yes|no)")
    message(FATAL_ERROR "${prog} printed an unexpected line: ${out}")
  endif()
  execute_process(COMMAND "${OBJDUMP}" -p "${BIN}/consumer/${prog}" OUTPUT_VARIABLE dyn)
  string(FIND "${dyn}" "NEEDED               ${SONAME}" needed)
  if(prog STREQUAL "consumer" AND needed EQUAL -1)
    message(FATAL_ERROR "${prog} does not need ${SONAME}:\n${dyn}")
  elseif(prog STREQUAL "consumer_static" AND NOT needed EQUAL -1)
    message(FATAL_ERROR "${prog} needs ${SONAME} although linked statically")
  endif()
endforeach()
# Version compatibility: same minor for 0.x (the SONAME changes with it).
string(REGEX MATCH "^([0-9]+)\\.([0-9]+)" _ "${VERSION}")
math(EXPR next_minor "${CMAKE_MATCH_2} + 1")
math(EXPR next_major "${CMAKE_MATCH_1} + 1")
foreach(want "${CMAKE_MATCH_1}.${next_minor}" "${next_major}.0")
  set(dir "${BIN}/want-${want}")
  file(MAKE_DIRECTORY "${dir}/src")
  file(WRITE "${dir}/src/CMakeLists.txt"
       "cmake_minimum_required(VERSION 3.16)\nproject(want NONE)\nfind_package(postcopy-ram ${want} REQUIRED)\n")
  execute_process(COMMAND "${CMAKE_COMMAND}" -S "${dir}/src" -B "${dir}/build" "-DCMAKE_PREFIX_PATH=${PREFIX}"
                  RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
  if(rc EQUAL 0)
    message(FATAL_ERROR "find_package(postcopy-ram ${want}) accepted version ${VERSION}")
  endif()
  message(STATUS "find_package(postcopy-ram ${want}) refused ${VERSION}, as it should")
endforeach()
