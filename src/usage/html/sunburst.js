// The usage page's sunburst and table, drawn from the JSON in #usage-data. Vanilla, no
// library, nothing fetched. Every string from the data goes through textContent or
// setAttribute, never markup.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("usage-data").textContent);
  var svg = document.getElementById("sunburst");
  // Read from the parsed <svg>, so that the page names no URL at all.
  var NS = svg.namespaceURI;
  var R = 316;
  var TAU = 2 * Math.PI;
  var HUE = { stable: [140, 45], beta: [35, 80], alpha: [350, 65], other: [215, 15] };
  var byPath = {};

  // Parents, depths and paths; the first node of a path wins (names may hold "/").
  function prepare(node, parent) {
    node.parent = parent;
    node.depth = parent ? parent.depth + 1 : 0;
    node.names = parent ? parent.names.concat([node.name]) : [];
    node.path = node.names.join("/");
    node.level = node.depth === 0 ? "" : node.names[0];
    if (!(node.path in byPath)) {
      byPath[node.path] = node;
    }
    (node.children || []).forEach(function (c) {
      prepare(c, node);
    });
  }
  prepare(data.tree, null);

  function height(node) {
    var h = 0;
    (node.children || []).forEach(function (c) {
      h = Math.max(h, 1 + height(c));
    });
    return h;
  }

  function el(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    Object.keys(attrs).forEach(function (k) {
      e.setAttribute(k, String(attrs[k]));
    });
    parent.appendChild(e);
    return e;
  }

  function point(r, a) {
    return (r * Math.sin(a)).toFixed(2) + "," + (-r * Math.cos(a)).toFixed(2);
  }

  // An annulus sector from angle a0 to a1 (clockwise from twelve o'clock), radii r0 < r1.
  function arc(a0, a1, r0, r1) {
    if (a1 - a0 >= TAU - 1e-6) {
      // A whole ring: two half circles each way (an arc to its own start draws nothing).
      return "M0," + -r1 + "A" + r1 + "," + r1 + " 0 1,1 0," + r1 + "A" + r1 + "," + r1 +
        " 0 1,1 0," + -r1 + "ZM0," + -r0 + "A" + r0 + "," + r0 + " 0 1,0 0," + r0 + "A" + r0 +
        "," + r0 + " 0 1,0 0," + -r0 + "Z";
    }
    var large = a1 - a0 > Math.PI ? 1 : 0;
    return "M" + point(r1, a0) + "A" + r1 + "," + r1 + " 0 " + large + ",1 " + point(r1, a1) +
      "L" + point(r0, a1) + "A" + r0 + "," + r0 + " 0 " + large + ",0 " + point(r0, a0) + "Z";
  }

  function colour(node) {
    var hs = HUE[node.level] || HUE.other;
    return "hsl(" + hs[0] + "," + hs[1] + "%," + (28 + node.depth * 11) + "%)";
  }

  function deprecated(node) {
    return node.calls > 0 && node.deprecatedCalls === node.calls;
  }

  function describe(node) {
    var s = (node.path || "all") + ": " + node.calls + " calls";
    if (node.deprecatedCalls > 0) {
      s += ", " + node.deprecatedCalls + " to deprecated APIs";
      if (node.removedRelease) {
        s += " (removed in " + node.removedRelease + ")";
      }
    }
    return s;
  }

  function draw(root) {
    while (svg.firstChild) {
      svg.removeChild(svg.firstChild);
    }
    var w = R / (height(root) + 1);
    var labels = [];
    function layout(node, a0, a1) {
      var kids = node.children || [];
      var total = kids.reduce(function (s, c) { return s + c.calls; }, 0);
      var a = a0;
      kids.forEach(function (c) {
        var span = total > 0 ? (a1 - a0) * c.calls / total : 0;
        var r0 = (c.depth - root.depth) * w;
        var attrs = {
          "class": deprecated(c) ? "segment deprecated" : "segment",
          d: arc(a, a + span, r0, r0 + w),
          fill: colour(c),
          "fill-rule": "evenodd",
          "data-depth": c.depth,
          "data-name": c.name,
          "data-path": c.path,
          "data-calls": c.calls
        };
        if (deprecated(c)) {
          attrs["data-deprecated"] = "true";
        }
        var p = el("path", attrs, svg);
        el("title", {}, p).textContent = describe(c);
        p.addEventListener("click", function () {
          zoom(c);
        });
        var mid = a + span / 2;
        var rm = r0 + w / 2;
        if (span * rm > 7 * c.name.length + 6 && w > 14) {
          labels.push({ at: point(rm, mid).split(","), name: c.name });
        }
        layout(c, a, a + span);
        a += span;
      });
    }
    layout(root, 0, TAU);
    labels.forEach(function (l) {
      el("text", { "class": "label", x: l.at[0], y: l.at[1] }, svg).textContent = l.name;
    });
    var centre = el("circle", {
      id: "zoom-out",
      r: w,
      "data-path": root.path,
      "data-name": root.name,
      "data-calls": root.calls
    }, svg);
    el("title", {}, centre).textContent = root.parent ? "back to " + (root.parent.path || "all") : describe(root);
    centre.addEventListener("click", function () {
      if (root.parent) {
        zoom(root.parent);
      }
    });
    el("text", { "class": "centre name", x: 0, y: -8 }, svg).textContent = root.depth ? root.name : "all";
    el("text", { "class": "centre calls", x: 0, y: 10 }, svg).textContent = root.calls + " calls";
    document.getElementById("zoomed").textContent = root.depth
      ? "Rows under " + root.path + " (click the centre to zoom out)"
      : "All rows (click a segment to zoom in)";
    table(root);
  }

  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (cls) {
      td.className = cls;
    }
    tr.appendChild(td);
  }

  function time(t) {
    // RFC 3339 in UTC, to the second.
    return t ? t.replace("T", " ").replace(/\.\d+/, "") : "-";
  }

  function table(root) {
    var body = document.getElementById("rows");
    while (body.firstChild) {
      body.removeChild(body.firstChild);
    }
    data.rows.forEach(function (row) {
      for (var i = 0; i < root.names.length; i++) {
        if (row.path[i] !== root.names[i]) {
          return;
        }
      }
      var tr = document.createElement("tr");
      if (row.deprecated) {
        tr.className = "deprecated";
      }
      cell(tr, row.calls, "n");
      cell(tr, row.level);
      cell(tr, row.verb);
      cell(tr, row.api, "api");
      cell(tr, row.operationId || "-", "api");
      cell(tr, row.user + " (" + row.kind + ")", "who");
      cell(tr, row.impersonator || "-", "who");
      cell(tr, row.agent, "who");
      cell(tr, row.success, "n");
      cell(tr, row.clientError, "n");
      cell(tr, row.serverError, "n");
      cell(tr, row.deprecated ? "yes" : "no");
      cell(tr, row.removedRelease || "-");
      cell(tr, time(row.firstSeen), "time");
      cell(tr, time(row.lastSeen), "time");
      body.appendChild(tr);
    });
  }

  function zoom(node) {
    draw(node);
    try {
      var url = node.depth
        ? "#zoom=" + encodeURIComponent(node.path).replace(/%2F/g, "/")
        : location.pathname + location.search;
      history.replaceState(null, "", url);
    } catch (e) {
      // A page opened where history cannot be rewritten still zooms.
    }
  }

  // #zoom=<data-path> opens the page zoomed into that segment.
  function fromHash() {
    var m = /^#zoom=(.*)$/.exec(location.hash);
    var path = "";
    if (m) {
      try {
        path = decodeURIComponent(m[1]);
      } catch (e) {
        path = m[1];
      }
    }
    draw(byPath[path] || data.tree);
  }

  window.addEventListener("hashchange", fromHash);
  fromHash();
})();
