# pcr_header_functions(<out_var> <header>): the names of the pcr_ functions the cbindgen header
# declares (lines starting with a return type and ending the name with "(", outside comments).
function(pcr_header_functions out_var header)
  # Split into lines by hand: list semantics would mangle ';' and unbalanced '[' ']'.
  file(READ "${header}" _text)
  string(REPLACE ";" "<SEMI>" _text "${_text}")
  string(REPLACE "[" "<LB>" _text "${_text}")
  string(REPLACE "]" "<RB>" _text "${_text}")
  string(REPLACE "\\" "<BS>" _text "${_text}")
  string(REPLACE "\n" ";" _lines "${_text}")
  set(_names "")
  foreach(_line IN LISTS _lines)
    if(_line MATCHES "^[A-Za-z_][A-Za-z0-9_ *]*[ *](pcr_[a-z0-9_]+)\\(")
      list(APPEND _names "${CMAKE_MATCH_1}")
    endif()
  endforeach()
  list(REMOVE_DUPLICATES _names)
  set(${out_var} "${_names}" PARENT_SCOPE)
endfunction()

# The seed's exported functions (QEMU 2.9 postcopy-ram.c + the May 2017 state functions).
set(PCR_SEED_FUNCTIONS
  postcopy_ram_supported_by_host postcopy_ram_incoming_init postcopy_ram_incoming_cleanup
  postcopy_ram_prepare_discard postcopy_ram_enable_notify postcopy_place_page
  postcopy_place_page_zero postcopy_get_tmp_page postcopy_discard_send_init
  postcopy_discard_send_range postcopy_discard_send_finish postcopy_state_get postcopy_state_set)
