# Loaded at DS9 start-up by tests/peers/harness.py:  ds9 ... -source tests/peers/ds9_init.tcl
#
# 1. Fix for Debian's saods9 8.4.1: the VOTable reader (VOTRead/VOTParse) uses xml::parser
#    from tclxml, but ds9.tcl never does "package require xml", and VOTRead swallows the
#    error. Without this line every SAMP table.load.votable gives an EMPTY catalog while
#    DS9 still replies samp.ok.
package require xml

# 2. Helper procs the harness calls by sourcing one-line Tcl files (xpaset -p TITLE source F).
#    Sourced code runs at global scope, where names such as fp, cat, var are DS9 arrays,
#    so everything lives in procs with a prefix that cannot clash.

# Broadcast coord.pointAt.sky (notifyAll) from DS9, bypassing DS9's lock and its
# "is there an image and a table client?" checks.
proc SampBridgeTestEmitPoint {ra dec} {
    SAMPSendCoordPointAtSky {} "$ra $dec"
}

# Broadcast table.select.rowList for catalog CATVAR (e.g. catvot2); ROWS are 1-based.
proc SampBridgeTestEmitRows {catvar rows} {
    SAMPSendTableRowListCmd $catvar $rows
}

# Write one line per loaded catalog to OUTFILE:  <catvar> <nrows> {<title>}
proc SampBridgeTestCatInfo {outfile} {
    global icat
    set out [open $outfile w]
    if {[info exists icat(cats)]} {
        foreach varname $icat(cats) {
            upvar #0 $varname v
            global $v(catdb)
            set n -1
            catch {set n [starbase_nrows $v(catdb)]}
            set title {}
            catch {set title $v(title)}
            puts $out [list $varname $n $title]
        }
    }
    close $out
}

# Write DS9's SAMP broadcast state to OUTFILE, one "key value" line each: lock (1 while DS9
# handles a SAMP message), image and table (how many other clients DS9 believes subscribe to
# image.load.fits and table.load.fits). DS9 broadcasts pointAt on a pan only when lock is 0
# and both counts are above 0 (SAMPSendCoordPointAtSkyCmd in library/samp.tcl).
proc SampBridgeTestSampState {outfile} {
    global samp
    set out [open $outfile w]
    if {[info exists samp]} {
        set lock 0
        catch {set lock $samp(lock)}
        set nimage 0
        catch {set nimage [llength $samp(apps,image)]}
        set ntable 0
        catch {set ntable [llength $samp(apps,table)]}
        puts $out "connected 1"
        puts $out "lock $lock"
        puts $out "image $nimage"
        puts $out "table $ntable"
    } else {
        puts $out "connected 0"
    }
    close $out
}

# 3. Tell the harness that the command line (and so this file) has been processed: DS9
#    registers with the hub before it processes -source, so SAMP readiness alone is too early.
if {[info exists env(SAMPBRIDGE_DS9_READY_FILE)]} {
    close [open $env(SAMPBRIDGE_DS9_READY_FILE) w]
}
