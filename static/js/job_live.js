// The job page's websocket URL carries ?after=<the last event the page was rendered with>.
// When the socket reconnects (the web server restarted), the htmx ws extension opens that
// same URL again; ask instead for what came after the last event the page shows now, so
// the history gets the missed events once each and nothing twice.
(function () {
  "use strict";
  if (!window.htmx || !htmx.createWebSocket) return;
  var open = htmx.createWebSocket;
  htmx.createWebSocket = function (url) {
    var live = document.getElementById("job-live");
    var last = live && live.dataset.lastEvent;
    if (last && /\/ws\/jobs\/\d+\//.test(url)) {
      url = url.replace(/([?&]after=)\d*/, "$1" + encodeURIComponent(last));
    }
    return open(url);
  };
})();
