// Peer reference for moonwire's benchmark: gorilla/websocket, run with
// GOMAXPROCS=1 so that it uses one core like the other servers.
//
//	/echo  every message comes back with its type
//	/sub   subscribes to the one topic
//	/pub   every message is sent to every subscriber, encoded once
//	       (websocket.PreparedMessage) and written by each subscriber's
//	       writer goroutine, as gorilla's chat example does
//
// -tls-cert and -tls-key serve TLS; -deflate negotiates permessage-deflate
// (gorilla supports it without context takeover) and compresses every write.
//
// Built offline against Debian's /usr/share/gocode (GOPATH, GO111MODULE=off).
// Logs "listening on HOST:PORT" on stderr.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"

	"github.com/gorilla/websocket"
)

var upgrader = websocket.Upgrader{
	ReadBufferSize:  4096,
	WriteBufferSize: 4096,
	CheckOrigin:     func(*http.Request) bool { return true },
}

func echo(w http.ResponseWriter, r *http.Request) {
	c, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer c.Close()
	c.SetReadLimit(16 << 20)
	for {
		mt, rd, err := c.NextReader()
		if err != nil {
			return
		}
		wr, err := c.NextWriter(mt)
		if err != nil {
			return
		}
		if _, err := io.Copy(wr, rd); err != nil {
			return
		}
		if err := wr.Close(); err != nil {
			return
		}
	}
}

type hub struct {
	mu   sync.Mutex
	subs map[*websocket.Conn]chan *websocket.PreparedMessage
}

var topic = hub{subs: map[*websocket.Conn]chan *websocket.PreparedMessage{}}

func sub(w http.ResponseWriter, r *http.Request) {
	c, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	ch := make(chan *websocket.PreparedMessage, 4096)
	topic.mu.Lock()
	topic.subs[c] = ch
	topic.mu.Unlock()
	go func() { // the writer
		for pm := range ch {
			if c.WritePreparedMessage(pm) != nil {
				return
			}
		}
	}()
	for { // the reader: answers pings, notices the close
		if _, _, err := c.NextReader(); err != nil {
			break
		}
	}
	topic.mu.Lock()
	delete(topic.subs, c)
	topic.mu.Unlock()
	close(ch)
	c.Close()
}

func pub(w http.ResponseWriter, r *http.Request) {
	c, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer c.Close()
	for {
		mt, data, err := c.ReadMessage()
		if err != nil {
			return
		}
		pm, err := websocket.NewPreparedMessage(mt, data)
		if err != nil {
			return
		}
		topic.mu.Lock()
		for _, ch := range topic.subs {
			select {
			case ch <- pm:
			default: // a subscriber 4096 messages behind loses this one
			}
		}
		topic.mu.Unlock()
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "HOST:PORT")
	cert := flag.String("tls-cert", "", "serve TLS with this certificate (PEM)")
	key := flag.String("tls-key", "", "the certificate's private key (PEM)")
	deflate := flag.Bool("deflate", false, "permessage-deflate on every message")
	flag.Parse()
	upgrader.EnableCompression = *deflate
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "gorilla: listening on %s\n", ln.Addr())
	http.HandleFunc("/echo", echo)
	http.HandleFunc("/sub", sub)
	http.HandleFunc("/pub", pub)
	if *cert != "" {
		fmt.Fprintln(os.Stderr, http.ServeTLS(ln, nil, *cert, *key))
	} else {
		fmt.Fprintln(os.Stderr, http.Serve(ln, nil))
	}
}
